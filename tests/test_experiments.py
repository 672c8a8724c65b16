"""Every experiment config loads and validates; paper-size models build abstractly."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer4_jax import config_checks
from dreamer4_jax.dynamics import Dynamics, init_params
from dreamer4_jax.model_configs import (
    dynamics_config_from,
    shortcut_config_from,
    tokenizer_config_from,
)
from dreamer4_jax.tokenizer import Tokenizer
from experiments import craftax_cpu, craftax_small, craftax_tiny, minecraft_paper


def _param_count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(tree))))


def test_paper_tokenizer_builds_abstractly_with_about_400m_params():
    config = minecraft_paper.get_config('tokenizer')
    cfg = tokenizer_config_from(config.tokenizer)
    assert (cfg.height, cfg.width, cfg.patch) == (384, 640, 16)
    assert cfg.num_patches == 960 and (cfg.num_latents, cfg.latent_dim) == (512, 16)
    model = Tokenizer(cfg)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 1, 384, 640, 3), jnp.float32))
    )
    n = _param_count(shapes)
    print(f'paper tokenizer parameters: {n / 1e6:.1f}M')
    assert 380e6 < n < 420e6  # PAPER 4.2: about 400M


def test_paper_dynamics_has_about_1p6b_params_and_the_paper_token_layout():
    config = minecraft_paper.get_config('dynamics')
    model = Dynamics(dynamics_config_from(config.dynamics, tokenizer_config_from(config.tokenizer)))
    c = model.config
    assert c.num_latents // c.pack == 256 and c.latent_dim * c.pack == 32  # PAPER 4.2
    t = c.transformer
    assert t.kv_heads < t.num_heads and c.num_registers > 0 and t.time_window == 192
    assert config.dynamics.short_length == 64 and config.data.window_length == 256  # T1 / T2
    assert 0 < config.dynamics.long_only_after < config.train.steps  # long-only finetune
    n = _param_count(jax.eval_shape(lambda: init_params(model, jax.random.key(0))))
    print(f'paper dynamics parameters: {n / 1e9:.3f}B')
    assert 1.5e9 < n < 1.7e9  # PAPER 8: 1.6B


@pytest.mark.parametrize('variant', minecraft_paper.VARIANTS)
def test_paper_variants_read_vpt_data_and_fit_a_256_chip_mesh(variant):
    config = minecraft_paper.get_config(variant)
    assert config.phase == variant and config.data.source == 'vpt'
    assert (config.data.resolution, config.data.width) == (384, 640)
    config_checks.check_train(config)
    shape = config_checks.resolve_mesh_shape(config.mesh.shape, 256)
    config_checks.check_batch_size(int(config.train.batch_size), shape, 64)  # 64 hosts x 4
    assert config.agent.num_tasks == 20


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match='unknown variant'):
        minecraft_paper.get_config('nope')


@pytest.mark.parametrize(
    'name', ['craftax_tiny', 'craftax_cpu', 'craftax_tiny_view', 'craftax_small', 'minecraft_paper']
)
def test_tokenizer_sees_at_most_its_training_window_wherever_it_is_used(name):
    """Later phases encode longer windows than the tokenizer trained on: its time window must
    cap what it attends to at the training length (issue: use matches training)."""
    module = importlib.import_module(f'experiments.{name}')
    tok = module.get_config('tokenizer')
    for part in ('encoder', 'decoder'):
        assert tok.tokenizer[part].time_window == tok.data.window_length, part
    assert module.get_config('dynamics').data.window_length > tok.data.window_length


def test_craftax_cpu_is_craftax_tiny_with_more_data_and_steps():
    """The results config changes data, steps and evaluation, BC's rows and the dynamics
    transformer's depth and width only: every other model shape, optimizers and learning rates
    are the demo's, field by field."""
    tiny, cpu = (
        importlib.import_module(f'experiments.{n}') for n in ('craftax_tiny', 'craftax_cpu')
    )
    for variant in tiny.VARIANTS:
        t, c = tiny.get_config(variant).to_dict(), cpu.get_config(variant).to_dict()
        assert c['train']['steps'] >= 2 * t['train']['steps'], variant
        assert c['data']['name'] != t['data']['name']
        assert c['data']['collect']['num_episodes'] > 3 * 64
        # Phase 3's value-only warm-up is longer, in proportion to its 1,500 steps.
        assert (t['imagination'].pop('policy_warmup'), c['imagination'].pop('policy_warmup')) == (
            50,
            300,
        )
        # Phase 2 clones the task-relevant windows only (PAPER 9.3); the demo clones them all.
        assert (t['agent'].pop('bc_rows'), c['agent'].pop('bc_rows')) == ('all', 'relevant')
        # A deeper, wider dynamics transformer: 8 layers (two of them over time) of width 128.
        tt, ct = t['dynamics']['transformer'], c['dynamics']['transformer']
        assert (tt.pop('depth'), tt.pop('width')) == (4, 96), variant
        assert (ct.pop('depth'), ct.pop('width')) == (8, 128), variant
        for section in ('tokenizer', 'dynamics', 'agent', 'imagination', 'phase'):
            assert c[section] == t[section], (variant, section)
        for field in ('optimizer', 'learning_rate', 'muon_learning_rate', 'batch_size'):
            assert c['train'][field] == t['train'][field], (variant, field)
    assert cpu.get_config('imagination').closed_loop.episodes >= 128
    # Settings after the variant reach it too (the figures command passes them).
    assert cpu.get_config('dynamics,dynamics.ramp=False').dynamics.ramp is False


def test_craftax_tiny_view_changes_only_the_behavior_policy_of_the_data():
    tiny, view = (
        importlib.import_module(f'experiments.{n}') for n in ('craftax_tiny', 'craftax_tiny_view')
    )
    for variant in tiny.VARIANTS:
        t, v = tiny.get_config(variant).to_dict(), view.get_config(variant).to_dict()
        tv, vv = t.pop('data'), v.pop('data')
        assert t == v, variant
        assert vv['name'] != tv['name'] and vv['collect'].pop('policy_mix') == {
            'random': 0.25,
            'view_seeker': 0.75,
        }
        tv['collect'].pop('policy_mix')
        assert {k: x for k, x in vv.items() if k != 'name'} == {
            k: x for k, x in tv.items() if k != 'name'
        }


def test_regressor_objective_setting_builds_a_valid_objective():
    """`craftax_tiny.py:dynamics,objective=regressor` is a consistent probe config."""
    tiny = importlib.import_module('experiments.craftax_tiny')
    c = tiny.get_config('dynamics,objective=regressor')
    obj = shortcut_config_from(c.dynamics)
    assert (obj.noise_levels, obj.shortcut, obj.ramp) == ('last_frame', False, False)
    assert c.dynamics.sampling_steps == 1 and c.dynamics.independent_fraction == 0.0
    assert shortcut_config_from(tiny.get_config('dynamics').dynamics).noise_levels == (
        'diffusion_forcing'
    )


def test_input_scale_is_signal_in_craftax_tiny_none_at_paper_scale_and_for_old_runs():
    """craftax_tiny (and the experiments built on it) scale the noisy input; the paper config
    keeps the paper's input; a dynamics section saved before the field existed loads as 'none'."""

    def scale(config):
        tok = tokenizer_config_from(config.tokenizer)
        return dynamics_config_from(config.dynamics, tok).input_scale

    assert scale(craftax_tiny.get_config('dynamics')) == 'signal'
    assert scale(craftax_cpu.get_config('dynamics')) == 'signal'
    assert scale(minecraft_paper.get_config('dynamics')) == 'none'
    old = craftax_tiny.get_config('dynamics')
    with old.dynamics.unlocked():
        del old.dynamics['input_scale']
    assert scale(old) == 'none'


def test_agent_departures_are_craftax_tiny_only():
    """craftax_tiny trains the policy at offset 0 on every window with the reward term at 0.3
    (README, phase 2: with the paper's settings BC learned only the action marginal in 300 steps);
    craftax_cpu, built on it, goes back to cloning the relevant windows only (PAPER 9.3: over its
    2,000 steps that separates WM+BC from BC); the paper config keeps PAPER 9.2-9.3."""

    def agent(module):
        a = module.get_config('agent').agent
        return int(a.mtp_length), str(a.bc_rows), dict(a.loss_weights)

    tiny = (0, 'all', {'dynamics': 1.0, 'bc': 1.0, 'reward': 0.3})
    assert agent(craftax_tiny) == tiny
    assert agent(craftax_cpu) == (0, 'relevant', tiny[2])
    assert agent(minecraft_paper) == (8, 'relevant', {'dynamics': 1.0, 'bc': 1.0, 'reward': 1.0})


def test_kl_weight_departure_is_craftax_tiny_only():
    """craftax_tiny (and craftax_cpu) keep phase 3 closer to the BC prior (beta = 1; README,
    phase 3: at 0.3 the policy learned to press `do` where the reward head pays it and the game
    does not); craftax_small and the paper config keep PAPER 10.3's 0.3, and every config the
    paper's c = 1."""

    def imagination(module):
        i = module.get_config('imagination').imagination
        return float(i.beta), str(i.continuation)

    assert imagination(craftax_tiny) == (1.0, 'ones')
    assert imagination(craftax_cpu) == (1.0, 'ones')
    assert imagination(craftax_small) == (0.3, 'ones')
    assert imagination(minecraft_paper) == (0.3, 'ones')
