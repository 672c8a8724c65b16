"""Data config (`config.data` of every experiment) and its validation.

Run-time overrides go through the experiment flag, e.g.
  --config.data.name=craftax_seeker --config.data.collect.num_episodes=1000
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from dreamer4_jax.data.policies import POLICY_NAMES
from dreamer4_jax.envs.craftax import CRAFTAX_MAX_TIMESTEPS, FRAME_SHAPE
from dreamer4_jax.errors import UserError

SOURCES = ('craftax', 'vpt')
MODES = ('uniform', 'relevant', 'mixture')
LATENT_MODES = ('on_the_fly', 'cache')
# Values of collect.task_events: which achievement events become task rewards (data/rollout.py).
TASK_EVENTS = ('first', 'every')


class DataError(UserError, ValueError):
    """A data setting or dataset on disk that cannot work; the message names it and the fix."""


class MissingDataError(DataError, FileNotFoundError):
    """A dataset folder or recording that does not exist."""


def default_data_config() -> ml_collections.ConfigDict:
    """The tiny Craftax dataset of `make demo`; larger datasets are a few overrides away."""
    c = ml_collections.ConfigDict()
    c.source = 'craftax'  # 'craftax' (collected here) or 'vpt' (contractor recordings in vpt.dir)
    c.name = 'craftax_tiny'  # the dataset lives in <dir>/<name>/
    c.dir = 'data_cache'
    # Stored frames are resolution x (width or resolution) x 3 uint8; must match the dataset.
    c.resolution = 64
    c.width = 0  # 0: square frames
    c.window_length = 16  # T frames per training window
    # Latents of the frozen tokenizer for phases 1b-3: 'on_the_fly' (windows carry images, the
    # step encodes them) or 'cache' (encoded once per tokenizer checkpoint; windows carry
    # 'latents'; dreamer4_jax/data/latent_cache.py).
    c.latents = 'on_the_fly'
    # Partial action labels (PAPER 12.5, Fig. 7): only the first episodes of the train split keep
    # their actions; label_first_episodes >= 0 wins over label_fraction. Eval keeps all labels.
    c.label_first_episodes = -1
    c.label_fraction = 1.0
    # Task-relevant windows (PAPER 9.3): windows containing an event of these tasks
    # ('all' or comma-separated task names); mixture_ratio = relevant fraction of each batch.
    c.relevant_tasks = 'all'
    c.mixture_ratio = 0.5
    c.eval_fraction = 0.1  # held-out episodes (the last ones) form the 'eval' split
    c.eval_batch_size = 16  # rows of the fixed held-out batch used by evaluators
    c.num_threads = 2  # reader threads of the grain pipeline
    c.prefetch_buffer_size = 4
    # > 0: decode in that many worker processes (grain mp_prefetch; needs absl flags parsed, as
    # in main.py). Worth it on many-core hosts: decoding is CPU-bound Python.
    c.num_workers = 0

    c.collect = ml_collections.ConfigDict()
    c.collect.num_episodes = 32
    c.collect.max_steps = 256  # episodes are truncated after this many frames
    c.collect.num_envs = 32  # parallel envs in the vmapped rollout
    c.collect.seed = 0
    c.collect.policy_mix = ml_collections.ConfigDict({'random': 0.5, 'seeker': 0.5})
    c.collect.max_repeat = 4  # random policy: each action held for 1..max_repeat steps
    c.collect.epsilon = 0.05  # seeker: probability of a uniformly random action
    # seeker: probability of a "try", a uniformly chosen place/make action wherever it stands, most
    # of which the game refuses (data/policies.py; README, "Tries in the data").
    c.collect.try_epsilon = 0.0
    c.collect.pool_size = 1024  # pre-generated worlds; episode e starts in world e % pool_size
    c.collect.chunk_steps = 32  # env steps per jitted scan
    # Which achievement events are task rewards: 'first' (the unlock, once per episode, as the
    # game's own reward) or 'every' (each occurrence, as VPT counts its events, PAPER 11; the
    # reward is then what the frames show, not whether it happened earlier in the episode).
    c.collect.task_events = 'first'

    c.vpt = ml_collections.ConfigDict()
    c.vpt.dir = ''  # folder of <id>.mp4 + <id>.jsonl recordings (source='vpt')
    c.vpt.strict = True  # jsonl lines must match video frames one to one
    # Reference-loader steps (openai/Video-Pre-Training data_loader.py; see data/vpt.py):
    c.vpt.draw_cursor = True  # draw the mouse cursor into frames while a GUI is open
    c.vpt.cursor_file = ''  # 16x16 RGBA cursor PNG ('' = built-in arrow of the same size)
    c.vpt.release_stuck_attack = True  # drop an attack button stuck down from the first tick
    return c


def frame_shape(cfg: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """(H, W, 3) the config expects the stored frames to have."""
    return (int(cfg.resolution), int(cfg.width or cfg.resolution), 3)


def dataset_path(cfg: ml_collections.ConfigDict) -> Path:
    return Path(cfg.dir) / cfg.name


def check_data_config(cfg: ml_collections.ConfigDict, *, for_build: bool = False) -> None:
    """Raises DataError naming the bad field and the fix."""

    def fail(field, msg):
        raise DataError(f'config.data.{field}: {msg}')

    if cfg.source not in SOURCES:
        fail('source', f'{cfg.source!r} is not one of {SOURCES}')
    if not cfg.name or '/' in cfg.name:
        fail('name', f'{cfg.name!r} must be a non-empty folder name')
    if not cfg.dir:
        fail('dir', 'is empty; set it to the folder that holds datasets (e.g. data_cache)')
    if cfg.resolution < 1 or cfg.width < 0:
        fail('resolution', f'resolution={cfg.resolution}, width={cfg.width} must be positive')
    if str(cfg.get('latents', 'on_the_fly')) not in LATENT_MODES:
        fail('latents', f'{cfg.latents!r} must be one of {LATENT_MODES}')
    if cfg.window_length < 1:
        fail('window_length', f'{cfg.window_length} must be >= 1')
    if not 0.0 <= cfg.label_fraction <= 1.0:
        fail('label_fraction', f'{cfg.label_fraction} must be in [0, 1]')
    if not 0.0 <= cfg.mixture_ratio <= 1.0:
        fail('mixture_ratio', f'{cfg.mixture_ratio} must be in [0, 1]')
    if cfg.num_threads < 0 or cfg.num_workers < 0 or cfg.prefetch_buffer_size < 0:
        fail('num_threads', 'num_threads, num_workers and prefetch_buffer_size must be >= 0')
    if not 0.0 <= cfg.eval_fraction < 1.0:
        fail('eval_fraction', f'{cfg.eval_fraction} must be in [0, 1)')
    if not for_build:
        return
    if cfg.source == 'craftax':
        if frame_shape(cfg) != FRAME_SHAPE:
            fail(
                'resolution',
                f'Craftax frames are stored as {FRAME_SHAPE[0]}x{FRAME_SHAPE[1]}; got '
                f'{frame_shape(cfg)[:2]}: set data.resolution=64 and data.width=0',
            )
        col = cfg.collect
        if col.num_episodes < 1:
            fail('collect.num_episodes', f'{col.num_episodes} must be >= 1')
        if not 2 <= col.max_steps <= CRAFTAX_MAX_TIMESTEPS:
            fail('collect.max_steps', f'{col.max_steps} must be in [2, {CRAFTAX_MAX_TIMESTEPS}]')
        if col.num_envs < 1 or col.chunk_steps < 1 or col.pool_size < 1 or col.max_repeat < 1:
            fail('collect', 'num_envs, chunk_steps, pool_size and max_repeat must be >= 1')
        if not 0.0 <= col.epsilon <= 1.0:
            fail('collect.epsilon', f'{col.epsilon} must be in [0, 1]')
        if not 0.0 <= col.get('try_epsilon', 0.0) <= 1.0:
            fail('collect.try_epsilon', f'{col.try_epsilon} must be in [0, 1]')
        if col.get('task_events', 'first') not in TASK_EVENTS:
            fail('collect.task_events', f'{col.task_events!r} must be "first" or "every"')
        mix = dict(col.policy_mix)
        bad_weight = any(not (0.0 <= v < float('inf')) for v in mix.values())
        if set(mix) - set(POLICY_NAMES) or bad_weight or sum(mix.values()) <= 0:
            fail('collect.policy_mix', f'{mix} needs weights >= 0 over {POLICY_NAMES}, sum > 0')
    elif not cfg.vpt.dir or not Path(cfg.vpt.dir).is_dir():
        fail('vpt.dir', f'{cfg.vpt.dir!r} is not a folder of <id>.mp4 + <id>.jsonl recordings')
    elif cfg.vpt.cursor_file and not Path(cfg.vpt.cursor_file).is_file():
        fail('vpt.cursor_file', f'{cfg.vpt.cursor_file!r} is not a file (a 16x16 RGBA PNG)')


def policy_mix_key(mix) -> dict[str, float]:
    """A policy mix as stored and compared: sorted, policies of weight 0 left out (a mix that
    names a policy at weight 0 collects the same episodes as one that does not name it)."""
    return {k: float(v) for k, v in sorted(dict(mix).items()) if float(v) != 0.0}


def collection_settings(cfg: ml_collections.ConfigDict) -> dict:
    """The settings a built dataset depends on (stored in its card; a mismatch is an error)."""
    base = {'source': cfg.source, 'image_shape': list(frame_shape(cfg))}
    base['eval_fraction'] = float(cfg.eval_fraction)
    if cfg.source == 'craftax':
        col = cfg.collect.to_dict()
        col['policy_mix'] = policy_mix_key(col['policy_mix'])
        col.pop('chunk_steps')  # speed only
        col.pop('num_envs')
        if col.get('task_events', 'first') == 'first':  # the datasets built before the option
            col.pop('task_events', None)
        if not col.get('try_epsilon', 0.0):  # likewise before tries existed
            col.pop('try_epsilon', None)
        return {**base, **col}
    v = cfg.vpt
    return {**base, 'vpt_dir': str(v.dir), 'strict': bool(v.strict),
            'draw_cursor': bool(v.draw_cursor), 'cursor_file': str(v.cursor_file),
            'release_stuck_attack': bool(v.release_stuck_attack)}  # fmt: skip
