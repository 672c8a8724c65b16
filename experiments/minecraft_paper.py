"""The paper's Minecraft scale on TPU pods (PAPER 4.2, 5, 6.5, 8, 9, 10, 11), VPT data.

  python -m dreamer4_jax.data.collect --source=vpt --vpt_dir=/data/vpt/6xx-10xx --name=vpt \
      --resolution=384 --width=640
  launch/tpu_pod.sh TPU ZONE experiments/minecraft_paper.py:tokenizer gs://BUCKET/mc/tokenizer
  launch/tpu_pod.sh TPU ZONE experiments/minecraft_paper.py:dynamics gs://BUCKET/mc/dynamics \
      --config.dynamics.tokenizer_workdir=gs://BUCKET/mc/tokenizer
  launch/tpu_pod.sh TPU ZONE experiments/minecraft_paper.py:agent gs://BUCKET/mc/agent \
      --config.agent.dynamics_workdir=gs://BUCKET/mc/dynamics
  launch/tpu_pod.sh TPU ZONE experiments/minecraft_paper.py:imagination gs://BUCKET/mc/imag \
      --config.imagination.agent_workdir=gs://BUCKET/mc/agent
  python -m dreamer4_jax.aot --config=experiments/minecraft_paper.py:dynamics --topology=v5p:8x8x4

Variants: 'tokenizer', 'dynamics', 'agent', 'imagination' (the phase to run), each on the VPT
contractor data (data.source='vpt': 360x640 frames at 20 FPS zero-padded to 384x640, 23 keys +
121 mouse bins, 20 tasks; PAPER 11 uses subsets 6-10, 2541 h, split 90/10 by 5-minute chunk,
which are the recordings).

From the paper: 400M tokenizer with 16x16 patches (960) and 512 latents x 16 channels; 1.6B
dynamics model that packs latent pairs into 256 tokens x 32 channels, with GQA and registers,
a 192-frame context, alternating T1 = 64 / T2 = 256 batches then long batches only; agent
tokens with a one-hot task over 20 tasks, multi-token prediction L = 8, 50/50 relevant/uniform
data; imagination with gamma 0.997, PMPO alpha 0.5, beta 0.3; FSDP with batch 1 per chip on
256-1024 TPU v5p chips.

Not in the paper [U] (choices here, each one config field):
  tokenizer        2 x 12 blocks at width 1024, 16 heads (406M together);
                   data.window_length 16 frames (also its time window); LPIPS on the last 4
                   frames of each window.
  dynamics         30 blocks at width 1920, 30 query heads of 64 with 3 KV heads (S9's
                   shape; 1.571B parameters), SwiGLU ratio 4, 32 registers, 1 action token,
                   K_max 64; every row pays the bootstrap teacher passes (teacher_rows 1);
                   every 10th step long (S9: 10 %), long batches only from step 540k of 600k.
  agent            1 agent token, heads of 1 x 1024, window 64 frames (T1), 100k steps.
  imagination      8 real context frames, horizon 32, lambda 0.95, 1000 value-only warm-up
                   steps, window 16 frames (the first 8 start rollouts), 50k steps.
  all              AdamW (not S9's Muon), lr 3e-4, 5k warm-up steps, bfloat16 matmuls,
                   remat 'full', Pallas splash attention, layers scanned in groups of 4;
                   batch 256 (1 per chip on 256 chips: set train.batch_size to the chip
                   count on other pods); mesh: FSDP over all chips for the tokenizer, over
                   groups of 64 chips (data parallel across groups) for the world model.
The compiled memory, FLOPs and step-time bounds of every variant on v5p pods are in README.md
("Paper scale on TPU pods"), measured with `python -m dreamer4_jax.aot`.
"""

from dreamer4_jax import model_configs as mc
from dreamer4_jax.config_settings import accepts_settings
from dreamer4_jax.configs import base_config

VARIANTS = ('tokenizer', 'dynamics', 'agent', 'imagination')

CHIPS = 256  # PAPER 8: 256 to 1024 TPU v5p, batch 1 per chip

# Shared by every transformer: bf16 matmuls, full remat, the TPU attention kernel, and
# layers scanned by groups of 4 (compile time and host memory; same function).
TPU_BLOCK = dict(dtype='bfloat16', remat='full', attention_impl='splash', scan_layers=True)


def paper_tokenizer():
    """PAPER 4.2: 384x640 frames, 16x16 patches (960), 512 latents x 16 channels, ~400M."""
    # Time window = its training window (16 frames): later phases encode 256-frame windows and
    # the tokenizer must not attend further back than it learned to.
    block = dict(width=1024, depth=12, num_heads=16, time_every=4, time_window=16, **TPU_BLOCK)
    return mc.tokenizer_config_dict(
        height=384,
        width=640,
        patch=16,
        num_latents=512,
        latent_dim=16,
        encoder=mc.transformer_config_dict(**block),
        decoder=mc.transformer_config_dict(**block),
        lpips_frames=4,  # [U] LPIPS (its VGG/AlexNet backward) on the last 4 frames only
    )


def paper_dynamics():
    """PAPER 4.2, 5, 6.5: 1.6B, 256 packed tokens x 32 channels, GQA, registers, C = 192."""
    return mc.dynamics_config_dict(
        action_space='minecraft',
        pack=2,  # 512 x 16 latents -> 256 tokens x 32 channels
        num_action_tokens=1,
        num_registers=32,  # [R] S9
        transformer=mc.transformer_config_dict(
            width=1920,
            depth=30,
            num_heads=30,
            num_kv_heads=3,  # GQA 10:1 [R] S9
            head_dim=64,
            mlp_ratio=4.0,
            time_every=4,
            time_window=192,  # C: 9.6 s at 20 FPS
            **TPU_BLOCK,
        ),
        k_max=64,
        short_length=64,  # T1; T2 = data.window_length = 256
        long_every=10,
        long_only_after=540_000,  # the long-only finetune: the last 10 % of the steps
        # With one row per chip, a quarter of the rows cannot be split over all chips (the
        # teacher passes would be replicated): every row holds bootstrap frames.
        teacher_rows=1.0,
        eval_context=32,
        eval_horizon=32,
    )


@accepts_settings
def get_config(arg: str | None = None):
    # Imported here, not at the top: the model shapes above are read by the paper-scale GPU
    # benchmark on machines that have JAX but not the data stack (tfds, PyAV, Craftax).
    from dreamer4_jax.data.config import default_data_config
    from dreamer4_jax.data.vpt import MINECRAFT_TASKS

    variant = arg or 'tokenizer'
    if variant not in VARIANTS:
        raise ValueError(
            f'experiments/minecraft_paper.py: unknown variant {arg!r}; choose one of {VARIANTS}.'
        )
    c = base_config()
    c.phase = variant
    # FSDP over every chip for the tokenizer (width 1024); the world model (width 1920 =
    # 30 x 64) shards over groups of 64 chips, data parallel across the groups. Multi-slice:
    # num_slices must divide the data axis.
    c.mesh.shape = (1, -1, 1) if variant == 'tokenizer' else (-1, 64, 1)

    c.data = default_data_config()
    c.data.source = 'vpt'
    c.data.name = 'vpt'
    c.data.resolution, c.data.width = 384, 640  # 360x640 zero-padded (PAPER 4.2)
    c.data.eval_fraction = 0.1  # PAPER 11: 90/10 by 5-minute chunk (= recording)
    c.data.eval_batch_size = 8
    c.data.num_threads = 16
    c.data.num_workers = 8  # mp4-decoded frames are big: decode in worker processes
    c.data.relevant_tasks = 'all'
    c.data.mixture_ratio = 0.5  # PAPER 9.3

    c.tokenizer = paper_tokenizer()
    c.dynamics = paper_dynamics()
    c.agent = mc.agent_config_dict(
        num_tasks=len(MINECRAFT_TASKS), head_hidden=1024, teacher_rows=1.0
    )
    c.imagination = mc.imagination_config_dict(context=8, horizon=32, policy_warmup=1000)

    c.train.batch_size = CHIPS
    c.train.learning_rate = 3e-4
    c.train.warmup_steps = 5_000
    c.train.log_every = 100
    c.train.checkpoint_every = 2_000
    c.train.eval_every = 10_000
    window, steps = {
        'tokenizer': (16, 200_000),
        'dynamics': (256, 600_000),
        'agent': (64, 100_000),
        'imagination': (16, 50_000),
    }[variant]
    c.data.window_length = window
    c.train.steps = steps
    return c
