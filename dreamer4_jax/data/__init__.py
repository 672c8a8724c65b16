"""Offline datasets: Craftax-Classic collection, VPT recordings, tfds storage, grain pipeline.

Entry points: `default_data_config()` (config.data), `ensure_dataset(config.data)` (build if
missing), `make_dataset(config.data, ...)` (checkpointable batches), `load_meta(config.data)`.
"""

from dreamer4_jax.data.build import DatasetMeta, build_dataset, ensure_dataset, load_meta
from dreamer4_jax.data.config import default_data_config
from dreamer4_jax.data.pipeline import make_dataset

__all__ = [
    'DatasetMeta',
    'build_dataset',
    'default_data_config',
    'ensure_dataset',
    'load_meta',
    'make_dataset',
]
