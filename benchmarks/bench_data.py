"""Data benchmarks: Craftax-Classic collection frames/s and grain loader batches/s.

Collection: steady-state stored frames per second of the jitted, vmapped collector (after its
first chunk, so compilation is reported apart as warmup), per behavior policy; slot steps per
second also count env slots idling at the end of a collection. Loader: batches per second of the
grain pipeline for batch 16 x T 16 (the tiny config) on real collected frames, with 0 / 2 reader
threads; compare with the training step rate to see how far the input pipeline is from being the
bottleneck.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from dreamer4_jax.actions import craftax_action_space
from dreamer4_jax.data import build, card, pipeline, rollout
from dreamer4_jax.data.config import default_data_config
from dreamer4_jax.envs.craftax import ACHIEVEMENT_NAMES


def collect(mix: dict, num_episodes: int, max_steps: int, num_envs: int, keep: bool) -> dict:
    episodes, summaries = [], []

    def on_episode(ep):
        summaries.append(card.episode_summary(ep))
        if keep:
            episodes.append(ep)

    stats = rollout.collect_episodes(
        num_episodes=num_episodes,
        max_steps=max_steps,
        num_envs=num_envs,
        seed=0,
        policy_of=rollout.assign_policies(num_episodes, mix, 0),
        on_episode=on_episode,
        progress=False,
    )
    hits = np.zeros(len(ACHIEVEMENT_NAMES))
    for s in summaries:
        hits[s['tasks']] += 1
    return {
        'steady_frames_per_sec': stats.steady_frames_per_second,
        'steady_slot_steps_per_sec': stats.steady_slot_steps_per_second,
        'warmup_sec': stats.warmup_seconds,
        'frames': stats.frames,
        'num_envs': num_envs,
        'coverage': {
            n: float(h / num_episodes) for n, h in zip(ACHIEVEMENT_NAMES, hits, strict=True)
        },
        '_episodes': episodes,
    }


def loader(cfg, threads: int, batches: int, batch: int = 16, window: int = 16) -> float:
    c = cfg.copy_and_resolve_references()
    c.num_threads = threads
    it = iter(pipeline.make_dataset(c, batch_size_per_process=batch, window_length=window))
    next(it)  # open files, start threads
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - t0)


def run(quick: bool = False) -> dict:
    out = {}
    if quick:
        runs = {'random': ({'random': 1.0}, 16, 64, 16)}
    else:
        # 4 episodes per env slot, so slots idling at the end weigh little.
        runs = {
            'random': ({'random': 1.0}, 256, 256, 64),
            'seeker': ({'seeker': 1.0}, 256, 256, 64),
            'mixed': ({'random': 0.5, 'seeker': 0.5}, 256, 256, 64),
        }
    kept = None
    for name, (mix, n, steps, envs) in runs.items():
        r = collect(mix, n, steps, envs, keep=kept is None)
        kept = kept or r['_episodes']
        out[f'collect_{name}'] = {k: v for k, v in r.items() if k != '_episodes'}
    with tempfile.TemporaryDirectory() as d:
        cfg = default_data_config()
        cfg.dir, cfg.name = d, 'bench'
        build.build_dataset_from_episodes(
            cfg, kept, action_space=craftax_action_space(), task_names=ACHIEVEMENT_NAMES
        )
        n = 10 if quick else 50
        out['loader_b16_t16_batches_per_sec'] = {
            f'threads_{t}': loader(cfg, t, n) for t in ((0, 2) if quick else (0, 1, 2, 4))
        }
    return out
