"""Base config shared by every experiment; experiments/<name>.py extend it.

Fields every phase reads live here (mesh, sharding rules, training loop, checkpointing); each phase
adds its own sub-config (`tokenizer`, `dynamics`, `agent`, `data`, ...). Weights of loss terms live
in the config, never in code (DESIGN 3).
"""

from __future__ import annotations

import ml_collections

# Logical axis name -> mesh axes. Parameters: 'embed', 'mlp', 'heads', 'kv_heads', 'head_dim',
# 'vocab', 'io'; activations: 'batch', 'time', 'tokens', 'act_*'. A name missing here is replicated.
# parallel.py drops a mesh axis where it does not divide the dimension (small GQA heads, say).
DEFAULT_SHARDING_RULES = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('mlp', 'model'),
    ('heads', 'model'),
    ('kv_heads', 'model'),
    ('act_mlp', 'model'),
    ('act_heads', 'model'),
    ('act_kv_heads', 'model'),
)


# Values of config.train.optimizer (dreamer4_jax/train/state.py: make_optimizer).
OPTIMIZERS = ('adamw', 'muon')


def base_config() -> ml_collections.ConfigDict:
    """Fields common to all phases, with defaults sized for a CPU test run."""
    c = ml_collections.ConfigDict()
    c.phase = 'toy'
    c.seed = 0

    # Device mesh (data, fsdp, model); -1 fills with the remaining devices (DESIGN 5).
    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (-1, 1, 1)
    c.mesh.num_devices = 0  # 0: every device; n: the first n (single-process runs only)
    # Multi-slice TPU: the data axis spans this many slices (data parallel across slices, FSDP
    # and model parallel within each), e.g. shape (2, -1, 1) with num_slices=2.
    c.mesh.num_slices = 1
    c.sharding_rules = DEFAULT_SHARDING_RULES

    # Multi-host: set num_processes > 1 (or run on a TPU pod, where jax discovers it).
    c.distributed = ml_collections.ConfigDict()
    c.distributed.enabled = False
    c.distributed.coordinator_address = ''
    c.distributed.num_processes = 1
    c.distributed.process_id = 0

    c.train = ml_collections.ConfigDict()
    c.train.steps = 100
    c.train.batch_size = 8  # global batch, over all processes
    c.train.learning_rate = 1e-3
    # 'adamw', or 'muon': Muon on weight matrices at muon_learning_rate, Adam at learning_rate
    # on the rest (dreamer4_jax/train/state.py: make_optimizer).
    c.train.optimizer = 'adamw'  # one of OPTIMIZERS
    c.train.muon_learning_rate = 0.02
    c.train.warmup_steps = 10
    c.train.weight_decay = 0.0
    c.train.grad_clip = 1.0
    c.train.log_every = 10
    c.train.eval_every = 0  # 0: evaluate only at the end
    c.train.checkpoint_every = 50
    c.train.keep_checkpoints = 2

    c.debug = ml_collections.ConfigDict()
    # Send SIGTERM to ourselves once this step is reached (tests the preemption path). -1: off.
    c.debug.sigterm_at_step = -1
    return c
