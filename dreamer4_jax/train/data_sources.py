"""Where phases get their batches: the dataset pipeline, configured from `config.data`.

Phases call these two functions by name and never touch the pipeline's options directly, so a
phase reads the same windows whichever dataset (Craftax, Minecraft VPT) the config points at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import ml_collections

from dreamer4_jax.config_checks import ConfigError


def uses_latent_cache(config: ml_collections.ConfigDict) -> bool:
    """True when the phase's windows carry cached 'latents' (config.data.latents='cache')."""
    data = config.get('data', None)
    mode = 'on_the_fly' if data is None else str(data.get('latents', 'on_the_fly'))
    if mode not in ('on_the_fly', 'cache'):
        raise ConfigError(f"config.data.latents={mode!r} must be 'on_the_fly' or 'cache'")
    return mode == 'cache'


def tokenizer_encoder(run: Any, params: Callable[[], Any]) -> Callable[[], Any] | None:
    """The `encoder` of `train_windows` for a loaded tokenizer run (`pretrained.Pretrained`)
    whose weights `params()` gives; None without a run (a tokenizer passed in directly)."""
    if run is None:
        return None

    def encoder():
        from dreamer4_jax.data import latent_cache  # deferred, as below

        return latent_cache.encoder_of(run, params())

    return encoder


def train_windows(
    config: ml_collections.ConfigDict,
    process_index: int,
    process_count: int,
    *,
    mode: str = 'uniform',
    encoder: Callable[[], object] | None = None,
    ladder: str | None = None,
    ladder_frame: int = 0,
) -> Iterator:
    """Endless iterator of this process's share of training windows (grain, checkpointable).

    With `config.data.latents='cache'` the windows carry the cached 'latents' of the tokenizer
    checkpoint `encoder()` (a latent_cache.Encoder) instead of 'image'; a missing or stale cache
    is encoded first in single-process runs (multi-process runs need it built beforehand).
    `ladder` / `ladder_frame`: the uniform rows' ladder prompts (pipeline.make_dataset).
    """
    # Deferred: tensorflow_datasets takes seconds to import.
    from dreamer4_jax.data import latent_cache, pipeline

    frames = {}
    if uses_latent_cache(config):
        if encoder is None:
            raise ConfigError(
                "config.data.latents='cache' serves the latents of a finished tokenizer run to "
                f'the phases after it; phase {config.phase!r} loads none here (the tokenizer '
                "phase itself, or a tokenizer passed in directly): use data.latents='on_the_fly'"
            )
        source = latent_cache.ensure(encoder(), config.data, 'train', may_build=process_count == 1)
        frames = {'latents': source, 'images': False}
    return iter(
        pipeline.make_dataset(
            config.data,
            split='train',
            seed=int(config.seed),
            process_index=process_index,
            process_count=process_count,
            batch_size_per_process=int(config.train.batch_size) // process_count,
            window_length=int(config.data.window_length),
            mode=mode,
            ladder=ladder,
            ladder_frame=ladder_frame,
            **frames,
        )
    )


def eval_batch(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int | None = None,
    window_length: int | None = None,
) -> dict:
    """A fixed batch of held-out windows (same every call: evaluation is comparable over time)."""
    from dreamer4_jax.data import pipeline  # deferred, as above

    dataset = pipeline.make_dataset(
        config.data,
        split='eval',
        seed=0,
        process_index=0,
        process_count=1,
        batch_size_per_process=int(batch_size or config.data.eval_batch_size),
        window_length=int(window_length or config.data.window_length),
        mode='uniform',
    )
    return next(iter(dataset))
