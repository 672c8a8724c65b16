"""The play page and its JSON API (Flask), around one `PlaySession`.

Routes (every other path is a 404; nothing from a request reaches the file system):
  GET  /                  the page; /app.js and /style.css, read from the package once at start
  GET  /api/state         run info, key map, the current frame (PNG data URL) and counters
  POST /api/step          {"action": int in [0, 17)} -> the next generated frame
  POST /api/reset         {"seed": int >= 0 (optional)} -> the first real frame of that world
  POST /api/task          {"task": name} -> prompts another task (agent runs)
  GET  /api/session.gif   the session so far as a GIF (side by side with the real env if on)
  GET  /api/session.mp4   ... as an H.264 MP4

Bodies must be JSON objects with exactly the documented fields (Content-Type:
application/json, which also keeps other web pages from posting to it: a cross-origin JSON POST
needs a CORS preflight this app never grants). Errors are JSON {"error", "detail"} with a 4xx
status; an unexpected failure is a 500 with no traceback (it goes to the server log). Bound to a
loopback address, requests must name a loopback host (no DNS rebinding).
"""

from __future__ import annotations

import base64
import importlib.resources
import logging
import math
import threading
from typing import Any

import flask
import imageio.v3 as iio
import numpy as np
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

from dreamer4_jax.play.session import PlaySession, StepResult

# event.key (lower-cased for letters) -> Craftax-Classic action; Crafter's own key map plus the
# arrow keys and a no-op key.
KEYS: dict[str, str] = {
    'n': 'noop',
    'a': 'left',
    'ArrowLeft': 'left',
    'd': 'right',
    'ArrowRight': 'right',
    'w': 'up',
    'ArrowUp': 'up',
    's': 'down',
    'ArrowDown': 'down',
    ' ': 'do',
    'Tab': 'sleep',
    'r': 'place_stone',
    't': 'place_table',
    'f': 'place_furnace',
    'p': 'place_plant',
    '1': 'make_wood_pickaxe',
    '2': 'make_stone_pickaxe',
    '3': 'make_iron_pickaxe',
    '4': 'make_wood_sword',
    '5': 'make_stone_sword',
    '6': 'make_iron_sword',
}
ASSETS = {
    '/': ('index.html', 'text/html; charset=utf-8'),
    '/app.js': ('app.js', 'text/javascript; charset=utf-8'),
    '/style.css': ('style.css', 'text/css; charset=utf-8'),
}
LOOPBACK = ('127.0.0.1', 'localhost', '::1')
MAX_SEED = 2**31 - 1
MAX_BODY_BYTES = 1024

log = logging.getLogger(__name__)


def png_data_url(frame: np.ndarray) -> str:
    png = iio.imwrite('<bytes>', np.asarray(frame, np.uint8), extension='.png')
    return 'data:image/png;base64,' + base64.b64encode(png).decode('ascii')


def _number(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def create_app(session: PlaySession, *, loopback_only: bool = True, run: str = '', phase: str = ''):
    """The Flask app serving `session` (reset with seed 0 if it was not reset yet).

    loopback_only: accept only requests whose Host is a loopback name (set when bound to one).
    """
    app = flask.Flask(__name__, static_folder=None)
    app.config['MAX_CONTENT_LENGTH'] = MAX_BODY_BYTES
    if loopback_only:
        app.config['TRUSTED_HOSTS'] = ['127.0.0.1', 'localhost', '[::1]']
    files = importlib.resources.files('dreamer4_jax.play') / 'static'
    assets = {route: ((files / name).read_bytes(), kind) for route, (name, kind) in ASSETS.items()}
    missing = sorted(set(KEYS.values()) - set(session.action_names))
    if missing:
        raise ValueError(f'key map names actions the env does not have: {missing}')
    lock = threading.Lock()  # one session, one model call at a time
    last: dict[str, Any] = {'result': None, 'action': None}
    with lock:
        if not session.frames:
            session.reset(0)

    def state(result: StepResult | None = None, action: int | None = None) -> dict:
        """Everything the page shows; `result` None: the session's latest frame."""
        if result is not None:
            last.update(result=result, action=action)
        result = last['result']
        frame, real = session.frames[-1]
        return {
            'run': run,
            'phase': phase,
            'index': session.index,
            'seed': session.seed,
            'frame': png_data_url(frame),
            'real_frame': png_data_url(real) if real is not None else None,
            'real_env': session.real_env,
            'real_done': bool(result.real_done) if result else False,
            'real_reward': _number(result.real_reward) if result else None,
            'has_reward': session.model.has_reward,
            'reward': _number(result.reward) if result else None,
            'task': session.task,
            'tasks': list(session.task_names),
            'model_ms': result.model_ms if result else None,
            'action': last['action'],
            'actions': list(session.action_names),
            'keys': KEYS,
        }

    def body(*fields: str) -> dict:
        data = flask.request.get_json(silent=True)
        if not isinstance(data, dict):
            flask.abort(400, 'the body must be a JSON object, sent as application/json')
        unknown = sorted(set(data) - set(fields))
        if unknown:
            flask.abort(400, f'unknown fields {unknown}; this route takes {list(fields)}')
        return data

    def integer(data: dict, name: str, low: int, high: int) -> int:
        value = data.get(name)
        # bool is an int in Python; JSON true is not an action.
        if type(value) is not int or not low <= value <= high:
            flask.abort(400, f'{name!r} must be an integer in [{low}, {high}], got {value!r}')
        return value

    def asset(route: str):
        content, kind = assets[route]
        return flask.Response(content, content_type=kind)

    for route in ASSETS:
        app.add_url_rule(route, f'asset{route}', lambda route=route: asset(route))

    @app.get('/api/state')
    def get_state():
        with lock:
            return flask.jsonify(state())

    @app.post('/api/step')
    def step():
        data = body('action')
        action = integer(data, 'action', 0, len(session.action_names) - 1)
        with lock:
            return flask.jsonify(state(session.step(action), action))

    @app.post('/api/reset')
    def reset():
        data = body('seed')
        seed = integer(data, 'seed', 0, MAX_SEED) if 'seed' in data else session.seed
        with lock:
            session.reset(seed)
            last.update(result=None, action=None)
            return flask.jsonify(state())

    @app.post('/api/task')
    def task():
        data = body('task')
        name = data.get('task')
        if not session.task_names:
            flask.abort(409, 'this run has no reward head: there is no task to prompt')
        if not isinstance(name, str) or name not in session.task_names:
            flask.abort(400, f"'task' must be one of {list(session.task_names)}, got {name!r}")
        with lock:
            session.set_task(name)
            return flask.jsonify(state())

    @app.get('/api/session.<any(gif, mp4):fmt>')
    def download(fmt: str):
        with lock:
            video = session.export(fmt)
        kind = 'image/gif' if fmt == 'gif' else 'video/mp4'
        return flask.Response(
            video,
            content_type=kind,
            headers={'Content-Disposition': f'attachment; filename=dreamer4_play.{fmt}'},
        )

    @app.after_request
    def headers(response: flask.Response) -> flask.Response:
        response.headers['X-Content-Type-Options'] = 'nosniff'
        response.headers['Cache-Control'] = 'no-store'
        response.headers['Content-Security-Policy'] = (
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
        )
        return response

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        return flask.jsonify(error=e.name, detail=e.description), e.code

    @app.errorhandler(Exception)
    def internal_error(e: Exception):
        log.exception('play server: request failed')
        return flask.jsonify(error='Internal Server Error', detail=type(e).__name__), 500

    return app


def make_play_server(app: flask.Flask, host: str, port: int) -> BaseWSGIServer:
    """A threaded WSGI server (Werkzeug's; one user on one machine) bound to host:port."""
    return make_server(host, port, app, threaded=True)
