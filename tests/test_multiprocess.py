"""Two processes on localhost through jax.distributed: each feeds its own data shard, the run
checkpoints, and a second launch restores it (per-process data-iterator state included)."""

import json
import os
import subprocess
import sys

import portpicker
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(workdir, steps):
    port = portpicker.pick_unused_port()
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    env.pop('XLA_FLAGS', None)  # one CPU device per process: the mesh spans both processes
    procs = []
    for pid in range(2):
        cmd = [
            sys.executable, '-m', 'dreamer4_jax.main', '--config=experiments/toy.py',
            f'--workdir={workdir}', f'--config.train.steps={steps}',
            '--config.train.log_every=10', '--config.train.checkpoint_every=20',
            '--config.distributed.enabled=True',
            f'--config.distributed.coordinator_address=localhost:{port}',
            '--config.distributed.num_processes=2', f'--config.distributed.process_id={pid}',
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail('2-process run timed out')
        outs.append(out)
        assert p.returncode == 0, out[-3000:]
    return outs


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_restore(tmp_path):
    workdir = str(tmp_path / 'run')
    out0, out1 = _launch(workdir, steps=20)
    assert '[toy] step 20/20' in out0
    assert '[toy] step' not in out1  # only process 0 prints progress and writes metrics
    data_dir = os.path.join(workdir, 'checkpoints', '20', 'data')
    assert sorted(os.listdir(data_dir))[-2:] == ['process_0-of-2.json', 'process_1-of-2.json']
    # Each process read its own shard: its iterator advanced by its own 20 batches.
    states = [json.load(open(os.path.join(data_dir, f'process_{i}-of-2.json'))) for i in (0, 1)]
    assert states[0] == states[1] and 'next_index' in json.dumps(states[0])

    out0, _ = _launch(workdir, steps=40)
    assert 'resumed from' in out0 and '[toy] step 40/40' in out0
    rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
    losses = {r['step']: r['loss'] for r in rows}
    assert losses[40] < losses[10]
