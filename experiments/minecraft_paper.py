"""The paper's Minecraft scale (PAPER 4.2, 8): for TPU pods; tests only build it abstractly.

  launch/tpu_pod.sh TPU ZONE experiments/minecraft_paper.py:tokenizer gs://BUCKET/mc/tokenizer

Variants: 'tokenizer'. Tokenizer: 360x640 frames zero-padded to 384x640, 16x16 patches (960),
512 latents x 16 channels, encoder and decoder of 12 blocks at width 1024 (about 403M parameters
together; the paper's total is 400M, its layer counts are not stated [U]). FSDP over all devices
with batch 1 per device (PAPER 8).
"""

from dreamer4_jax.configs import base_config
from dreamer4_jax.model_configs import tokenizer_config_dict, transformer_config_dict

VARIANTS = ('tokenizer',)


def paper_tokenizer():
    block = dict(
        width=1024,
        depth=12,
        num_heads=16,
        time_every=4,
        time_window=192,
        dtype='bfloat16',
        remat='dots',
    )
    return tokenizer_config_dict(
        height=384,
        width=640,
        patch=16,
        num_latents=512,
        latent_dim=16,
        encoder=transformer_config_dict(**block),
        decoder=transformer_config_dict(**block),
    )


def get_config(arg: str | None = None):
    variant = arg or 'tokenizer'
    if variant not in VARIANTS:
        raise ValueError(
            f'experiments/minecraft_paper.py: unknown variant {arg!r}; choose one of {VARIANTS}.'
        )
    c = base_config()
    c.phase = variant
    c.mesh.shape = (1, -1, 1)  # FSDP over every device
    c.tokenizer = paper_tokenizer()
    c.train.batch_size = 256  # PAPER 8: 1 sequence per device on 256-1024 TPU-v5p
    c.train.steps = 200_000  # [U] not stated
    c.train.learning_rate = 3e-4  # [U]
    c.train.warmup_steps = 5_000
    c.train.log_every = 100
    c.train.checkpoint_every = 2_000
    return c
