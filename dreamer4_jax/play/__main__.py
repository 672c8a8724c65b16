"""`make play`: play a trained world model in the browser.

  python -m dreamer4_jax.play --workdir=runs/demo [--port=8000] [--host=127.0.0.1]
      [--task=collect_wood] [--real_env=false] [--seed=0]

--workdir is a demo workdir (the imagination, agent or dynamics run in it is played, in that
order of preference) or one phase run folder. Open the printed address; see README.md, "Play the
world model".
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ('1', '0', 'true', 'false', 'yes', 'no', 'on', 'off'):
        raise argparse.ArgumentTypeError(f'expected true or false, got {text!r}')
    return value in ('1', 'true', 'yes', 'on')


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='python -m dreamer4_jax.play', description=__doc__)
    p.add_argument('--workdir', default='runs/demo', help='demo workdir or phase run folder')
    p.add_argument('--host', default='127.0.0.1', help='address to listen on (default loopback)')
    p.add_argument('--port', type=int, default=8000, help='port (0: any free port)')
    p.add_argument('--task', default=None, help='prompted task (agent / imagination runs)')
    p.add_argument(
        '--real_env',
        type=_bool,
        nargs='?',
        const=True,
        default=True,
        help='show the real environment side by side (true / false)',
    )
    p.add_argument('--seed', type=int, default=0, help='world of the first reset')
    args = p.parse_args(argv)
    if not 0 <= args.port < 65536:
        p.error(f'--port={args.port} is not a port number')
    if args.seed < 0:
        p.error(f'--seed={args.seed} must be >= 0')
    if not os.path.isdir(args.workdir):
        p.error(f'--workdir={args.workdir} does not exist (run `make demo` first)')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Deferred: flags are checked (and --help answers) before jax and the models load.
    from dreamer4_jax.play.server import LOOPBACK, create_app, make_play_server
    from dreamer4_jax.play.session import PlaySession, find_run, load_model

    run_dir = find_run(args.workdir)
    start = time.perf_counter()
    model, params, run = load_model(run_dir)
    if args.task is not None and not model.has_reward:
        print(f'--task needs an agent or imagination run; {run_dir} is a {run.phase} run')
        return 2
    session = PlaySession(model, params, real_env=args.real_env, task=args.task)
    print(f'[play] {run.phase} run {run_dir} loaded; compiling (the first time takes a while)')
    # Compile reset and step (and the real env's step) before the first key press.
    session.reset(args.seed)
    session.step(0)
    session.reset(args.seed)
    print(f'[play] ready in {time.perf_counter() - start:.0f} s')
    app = create_app(
        session, loopback_only=args.host in LOOPBACK, run=run_dir, phase=str(run.phase)
    )
    server = make_play_server(app, args.host, args.port)
    if args.host not in LOOPBACK:
        print(f'[play] listening on {args.host}: anyone who can reach it can use it')
    shown = f'[{args.host}]' if ':' in args.host else args.host
    print(f'[play] open http://{shown}:{server.server_port}/  (Ctrl+C stops)', flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
