"""Craftax-Classic results config for a CPU: the demo's models, trained about ten times longer.

  python -m dreamer4_jax.figures table7 --scale=experiments/craftax_cpu.py --workdir=runs/cpu \
      --episodes=128

trains every stage of the demo pipeline (tokenizer, dynamics, agent, bc, imagination) in
runs/cpu/<stage> and plays 128 real episodes per agent (Table 7 at Craftax scale). Measured on 2
CPU cores with 64 tokenizer latents (README, "A results config for a CPU"): data 3 min, tokenizer
about 67 (2 steps/s), latent encode 2, dynamics 10, agent 4.5, bc 4, imagination 8, evaluation 6;
about 105 min in all. Every stage checkpoints every 500 steps, so the same command resumes an
interrupted run, and the stages can run in pieces.

Model shapes are craftax_tiny's (experiments/craftax_tiny.py, next to this file) but for the
tokenizer, which stays at the one every table of this config was measured with: 64 latents and
MSE + 0.2 LPIPS (`EARLIER_TOKENIZER`; craftax_tiny moved to 96 latents and the MSE alone later),
and for the optimizer of the dynamics and agent stages, which stays AdamW (`EARLIER_OPTIMIZER`;
craftax_tiny's moved to Muon later).
Otherwise this file changes only the data (200 episodes of up to 512 steps, four in five from the
seeker, which reaches iron in most episodes), the step counts and the evaluation.
"""

from dreamer4_jax.config_settings import accepts_settings, set_field, sibling_experiment

craftax_tiny = sibling_experiment(__file__, 'craftax_tiny')

VARIANTS = craftax_tiny.VARIANTS
SETTINGS = craftax_tiny.SETTINGS
STEPS = {'tokenizer': 8000, 'dynamics': 4000, 'agent': 2000, 'imagination': 1500}
# Figure sizes: Table 7 with 128 episodes of up to 500 steps per agent.
FIGURES = {**craftax_tiny.FIGURES, 'episodes': 128, 'max_steps': 500}
# The tokenizer this config's measured runs trained (README, "A results config for a CPU"): 64
# latents packed by 4 for the dynamics, LPIPS on the last 2 frames of each window. Its 8,000 steps
# reach 31.2 dB, so the status row that 800 steps of it miss is learned here.
EARLIER_TOKENIZER = {
    'tokenizer.num_latents': 64,
    'tokenizer.loss_weights.lpips': 0.2,
    'tokenizer.lpips_frames': 2,
    'dynamics.pack': 4,
}
EARLIER_OPTIMIZER = {'train.optimizer': 'adamw'}  # of the dynamics and agent variants


@accepts_settings
def get_config(arg: str | None = None):
    variant = arg or 'tokenizer'
    if variant not in VARIANTS:
        raise ValueError(
            f'experiments/craftax_cpu.py: unknown variant {arg!r}; choose one of {VARIANTS}.'
        )
    c = craftax_tiny.get_config(variant)
    earlier = {**EARLIER_TOKENIZER}
    if variant in ('dynamics', 'agent'):
        earlier.update(EARLIER_OPTIMIZER)
    for field, value in earlier.items():
        set_field(c, field, value)
    c.data.name = 'craftax_cpu'
    c.data.collect.num_episodes = 200
    c.data.collect.max_steps = 512
    c.data.collect.num_envs = 64
    c.data.collect.policy_mix = {'random': 0.2, 'seeker': 0.8}
    c.train.steps = STEPS[variant]
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    # Held-out metrics during the long tokenizer and dynamics runs, not only at the end.
    c.train.eval_every = 2000 if variant in ('tokenizer', 'dynamics') else 0
    c.imagination.policy_warmup = 300  # value-only steps first (see craftax_tiny.py)
    c.closed_loop.episodes = FIGURES['episodes']
    c.closed_loop.max_steps = FIGURES['max_steps']
    return c
