"""Compile time from jax.monitoring spans (dreamer4_jax/compile_clock.py) and the demo's table."""

import jax
import jax.numpy as jnp

from dreamer4_jax import demo
from dreamer4_jax.compile_clock import CompileClock, union_seconds


def test_union_counts_nested_and_overlapping_spans_once():
    assert union_seconds([]) == 0.0
    assert union_seconds([(0.0, 1.0), (0.2, 0.5), (0.8, 2.0), (3.0, 3.5)]) == 2.5


def test_clock_sees_a_compile_and_not_a_cached_call():
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)
    x = jnp.ones((7, 3))
    with CompileClock() as first:
        f(x).block_until_ready()
    with CompileClock() as again:
        f(x).block_until_ready()
    assert 0.0 < first.compile <= first.wall
    assert again.compile == 0.0  # the cached executable: nothing traced or compiled


def test_demo_prints_each_stage_and_the_total():
    table = demo.timing_table([('data', 2.0, 0.0), ('tokenizer', 150.0, 30.0)], 152.5)
    lines = table.splitlines()
    assert lines[1].split() == ['data', '2.0', 's', '(compiling', '0.0', 's,', '0', '%)']
    assert lines[2].split()[:3] == ['tokenizer', '2.5', 'min']
    assert '(compiling 30.0 s, 20 %)' in lines[2]
    assert (
        lines[3].split()[:3] == ['total', '2.5', 'min'] and '(compiling 30.0 s, 20 %)' in lines[3]
    )
