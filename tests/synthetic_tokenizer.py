"""A one-layer craftax_tiny tokenizer config on a synthetic dataset, for benchmark tests."""

from __future__ import annotations

from dreamer4_jax import config_checks
from dreamer4_jax.data.synthetic import build_synthetic_dataset


def one_layer_tokenizer_settings(data_dir: str, name: str) -> list[str]:
    """Settings for experiments/craftax_tiny.py:tokenizer: data under data_dir/name, encoder and
    decoder one layer deep without time attention (seconds to compile)."""
    return [
        f'data.dir={data_dir}',
        f'data.name={name}',
        'tokenizer.encoder.depth=1',
        'tokenizer.decoder.depth=1',
        'tokenizer.encoder.time_every=0',
        'tokenizer.decoder.time_every=0',
    ]


def synthetic_tokenizer_config(settings: list[str], episodes: int):
    """The craftax_tiny tokenizer config with `settings`, its dataset built synthetically with
    `episodes` episodes of 8 frames."""
    config = config_checks.load_config(
        'experiments/craftax_tiny.py:tokenizer,' + ','.join(settings)
    )
    build_synthetic_dataset(config.data, lengths=(8,) * episodes)
    return config
