"""Where phases get their batches: the dataset pipeline, configured from `config.data`.

Phases call these two functions by name and never touch the pipeline's options directly, so a
phase reads the same windows whichever dataset (Craftax, Minecraft VPT) the config points at.
"""

from __future__ import annotations

from collections.abc import Iterator

import ml_collections


def train_windows(
    config: ml_collections.ConfigDict,
    process_index: int,
    process_count: int,
    *,
    mode: str = 'uniform',
) -> Iterator:
    """Endless iterator of this process's share of training windows (grain, checkpointable)."""
    from dreamer4_jax.data import pipeline  # deferred: tensorflow_datasets takes seconds to import

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
