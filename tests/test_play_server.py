"""The play web app: its API through Flask's test client (malformed requests, downloads) and
the page in a real headless Chromium (a key press makes a new frame)."""

import base64
import io
import json
import shutil
import socket
import tempfile
import threading

import imageio.v3 as iio
import numpy as np
import pytest
from play_runs import FakeEnv, make_runs

from dreamer4_jax.play import server as play_server
from dreamer4_jax.play.session import PlaySession, load_model

CHROMIUM = shutil.which('chromium')
CHROMEDRIVER = shutil.which('chromedriver')
CHROMIUM_FLAGS = (
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--window-size=1280,900',
)


@pytest.fixture(scope='module')
def session(tmp_path_factory):
    runs = make_runs(str(tmp_path_factory.mktemp('play')))
    model, params, _ = load_model(runs['agent'])
    return PlaySession(model, params, env=FakeEnv(), real_env=True)


@pytest.fixture(scope='module')
def app(session):
    return play_server.create_app(session, run='tiny', phase='agent')


@pytest.fixture
def client(app, session):
    client = app.test_client()
    assert client.post('/api/reset', json={'seed': 0}).status_code == 200
    return client


def _frame(data_url: str) -> np.ndarray:
    prefix = 'data:image/png;base64,'
    assert data_url.startswith(prefix)
    return iio.imread(base64.b64decode(data_url[len(prefix) :]), extension='.png')


def test_page_and_assets(client):
    page = client.get('/')
    assert page.status_code == 200 and page.content_type.startswith('text/html')
    assert b'id="frame"' in page.data and b'/app.js' in page.data
    assert client.get('/app.js').content_type.startswith('text/javascript')
    assert client.get('/style.css').content_type.startswith('text/css')
    assert page.headers['X-Content-Type-Options'] == 'nosniff'
    assert "frame-ancestors 'none'" in page.headers['Content-Security-Policy']


def test_step_reset_and_task(client, session):
    state = client.get('/api/state').get_json()
    assert state['index'] == 0 and state['has_reward'] and state['real_env']
    assert len(state['actions']) == 17 and state['keys']['ArrowUp'] == 'up'
    assert set(state['keys'].values()) <= set(state['actions'])
    first = _frame(state['frame'])
    assert first.shape == (64, 64, 3)

    out = client.post('/api/step', json={'action': 3}).get_json()
    assert out['index'] == 1 and out['action'] == 3 and out['model_ms'] > 0
    assert isinstance(out['reward'], float) and out['task'] == state['tasks'][0]
    assert not np.array_equal(_frame(out['frame']), first)
    np.testing.assert_array_equal(_frame(out['real_frame']), np.roll(first, 3, axis=1))

    out = client.post('/api/task', json={'task': state['tasks'][2]}).get_json()
    assert out['task'] == state['tasks'][2] and session.task_id == 2
    out = client.post('/api/reset', json={'seed': 4}).get_json()
    assert out['index'] == 0 and out['seed'] == 4 and out['model_ms'] is None
    assert not np.array_equal(_frame(out['frame']), first)  # another world


BAD_REQUESTS = [
    # (method, path, request kwargs, status)
    ('post', '/api/step', dict(data='{bad', content_type='application/json'), 400),
    ('post', '/api/step', dict(data='action=1'), 400),  # a form, not JSON
    ('post', '/api/step', dict(json=[1]), 400),
    ('post', '/api/step', dict(json={}), 400),
    ('post', '/api/step', dict(json={'action': 17}), 400),
    ('post', '/api/step', dict(json={'action': -1}), 400),
    ('post', '/api/step', dict(json={'action': 1.0}), 400),
    ('post', '/api/step', dict(json={'action': '1'}), 400),
    ('post', '/api/step', dict(json={'action': True}), 400),
    ('post', '/api/step', dict(json={'action': None}), 400),
    ('post', '/api/step', dict(json={'action': 1, 'more': 2}), 400),
    ('post', '/api/step', dict(json={'action': 1, 'pad': 'x' * 2000}), 413),
    ('post', '/api/reset', dict(json={'seed': -1}), 400),
    ('post', '/api/reset', dict(json={'seed': 2**40}), 400),
    ('post', '/api/reset', dict(json={'seed': '0'}), 400),
    ('post', '/api/task', dict(json={'task': 'collect_unicorns'}), 400),
    ('post', '/api/task', dict(json={'task': 3}), 400),
    ('get', '/api/step', {}, 405),
    ('post', '/', dict(json={}), 405),
    ('get', '/nothing', {}, 404),
    ('get', '/../../etc/passwd', {}, 404),
    ('get', '/static/..%2f..%2fetc%2fpasswd', {}, 404),
    ('get', '/%2e%2e/%2e%2e/etc/passwd', {}, 404),
    ('get', '/app.js/../../../etc/passwd', {}, 404),
    ('get', '/index.html', {}, 404),
    ('get', '/setup.py', {}, 404),
    ('get', '/api/session.avi', {}, 404),
    ('get', '/api/state', dict(headers={'Host': 'evil.example'}), 400),  # DNS rebinding
]


@pytest.mark.parametrize('method,path,kwargs,status', BAD_REQUESTS)
def test_malformed_requests_get_a_4xx_json_error(client, session, method, path, kwargs, status):
    index = session.index
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.data
    body = response.get_json()
    assert set(body) == {'error', 'detail'}
    assert b'Traceback' not in response.data and b'root:' not in response.data
    assert session.index == index  # nothing was generated


def test_failure_inside_the_model_is_a_500_without_details(client, session, monkeypatch):
    def broken(action):
        raise RuntimeError('secret internals')

    monkeypatch.setattr(session, 'step', broken)
    response = client.post('/api/step', json={'action': 0})
    assert response.status_code == 500
    assert response.get_json() == {'error': 'Internal Server Error', 'detail': 'RuntimeError'}


def test_downloads_are_valid_gif_and_mp4(client, session):
    for action in (1, 2, 3):
        client.post('/api/step', json={'action': action})
    for fmt, kind in (('gif', 'image/gif'), ('mp4', 'video/mp4')):
        response = client.get(f'/api/session.{fmt}')
        assert response.status_code == 200 and response.content_type == kind
        assert (
            response.headers['Content-Disposition'] == f'attachment; filename=dreamer4_play.{fmt}'
        )
        video = iio.imread(io.BytesIO(response.data), extension=f'.{fmt}', index=None)
        # 4 frames: generated | real side by side, scaled 4x
        assert video.shape[:3] == (4, 256, 4 * (64 + 2 + 64)), fmt


@pytest.fixture
def served(app, client):
    server = play_server.make_play_server(app, '127.0.0.1', 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    server.server_close()


def _raw_get(port: int, path: str) -> bytes:
    """A GET with the path exactly as given (clients normalise '..' away)."""
    with socket.create_connection(('127.0.0.1', port), timeout=10) as s:
        s.sendall(
            f'GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n'.encode()
        )
        return b''.join(iter(lambda: s.recv(65536), b''))


@pytest.mark.slow
@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason='needs Chromium and its WebDriver: apt-get install chromium chromium-driver',
)
def test_headless_chromium_key_press_makes_a_new_frame(served):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    for path in ('/../../etc/passwd', '/static/..%2f..%2fetc%2fpasswd'):
        reply = _raw_get(served, path)
        assert reply.startswith(b'HTTP/1.1 404') and b'root:' not in reply, reply[:200]

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f'--user-data-dir={profile}')
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.get(f'http://127.0.0.1:{served}/')
            wait = WebDriverWait(driver, 120)  # generous: CI machines are shared

            def text(element_id):
                return driver.find_element(By.ID, element_id).text

            def src(element_id):  # '' until the page has set it
                return driver.find_element(By.ID, element_id).get_attribute('src') or ''

            wait.until(lambda d: src('frame').startswith('data:image/png') and text('counter'))
            assert text('counter') == '0'
            assert len(driver.find_elements(By.CSS_SELECTOR, '#legend tr')) == 17
            assert driver.find_element(By.ID, 'real-view').is_displayed()
            body = driver.find_element(By.TAG_NAME, 'body')
            for count, key in enumerate(('d', Keys.ARROW_UP, Keys.SPACE), start=1):
                before = src('frame')
                body.send_keys(key)
                wait.until(lambda d, count=count: text('counter') == str(count))
                assert src('frame') != before
            assert 'ms/frame' in text('fps') and text('last-action') == 'do'
            assert text('reward') not in ('', '-')
            errors = [e for e in driver.get_log('browser') if e['level'] == 'SEVERE']
            assert not errors, json.dumps(errors)
        finally:
            driver.quit()
