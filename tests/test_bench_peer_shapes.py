"""The generation floor figures of benchmarks/bench_peer_shapes.py (counts, not timings)."""

import numpy as np

from benchmarks import bench_peer_shapes as b
from dreamer4_jax.dynamics import Dynamics
from dreamer4_jax.jaxpr_flops import function_flops


def test_frame_flops_are_k_denoising_passes_plus_the_commit():
    config = b.peer_config(width=32, mlp_hidden=64)
    model, params = b.gen_setup(config)
    cache, act, has = b._prefilled(model, params, 1, 8, 4)
    c = model.config
    z = np.zeros((1, 1, c.num_latents, c.latent_dim), np.float32)
    tau, d = np.zeros((1, 1), np.float32), np.full((1, 1), 0.25, np.float32)

    def one_pass(params, cache):
        return model.apply({'params': params}, z, tau, d, act, has, cache, False, None,
                           method=Dynamics.step)  # fmt: skip

    per_pass = function_flops(one_pass, params, cache).flops
    # The one pass by hand: per block q/k/v + output projections and the SwiGLU MLP on S tokens
    # (attention products are read off the count: they depend on the block kind).
    s, w, f, t = c.layout().num_tokens, 32, 64, c.transformer
    heads = t.num_heads * t.key_dim
    proj = 2 * s * w * (heads + 2 * t.kv_heads * t.key_dim) + 2 * s * heads * w
    mlp = 2 * s * w * 2 * f + 2 * s * f * w
    assert t.depth * (proj + mlp) < per_pass < 2 * t.depth * (proj + mlp)
    for k in (1, 2, 4):
        gflop = b.frame_gflop(model, params, context=8, steps=k)
        assert np.isclose(gflop * 1e9, (k + 1) * per_pass, rtol=1e-6), k
    # The floor divides by a measured speed; here only that it measures something.
    assert np.isfinite(b.rows_matmul_gflops(rows=4, width=16, hidden=32, chain=4))
