"""The demo pipeline (experiments/craftax_tiny.py) on data from the `view_seeker`.

  python -m dreamer4_jax.figures table7 --scale=experiments/craftax_tiny_view.py \
      --workdir=runs/view --episodes=64

The view seeker is the scripted seeker restricted to the 7 x 9 cells its frame shows
(dreamer4_jax/data/policies.py), so what it does can in principle be read off the frames BC
learns from. Only the dataset changes (its own name, three in four episodes from the view seeker,
one in four random, as the demo); models, steps and evaluation are craftax_tiny's. Measured on the
demo tokenizer (README, phase 2): BC still at the majority accuracy, Table 7 returns within the
intervals of the seeker's data.
"""

import ml_collections

from dreamer4_jax.config_settings import accepts_settings, sibling_experiment

craftax_tiny = sibling_experiment(__file__, 'craftax_tiny')

VARIANTS = craftax_tiny.VARIANTS
SETTINGS = craftax_tiny.SETTINGS
FIGURES = craftax_tiny.FIGURES


@accepts_settings
def get_config(arg: str | None = None):
    variant = arg or 'tokenizer'
    if variant not in VARIANTS:
        raise ValueError(
            f'experiments/craftax_tiny_view.py: unknown variant {arg!r}; choose one of {VARIANTS}.'
        )
    c = craftax_tiny.get_config(variant)
    c.data.name = 'craftax_view64'
    c.data.collect.policy_mix = ml_collections.ConfigDict({'random': 0.25, 'view_seeker': 0.75})
    return c
