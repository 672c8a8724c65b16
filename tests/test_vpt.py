"""VPT contractor reader: tiny mp4 + jsonl files written here; conversion, errors, dataset build."""

import json

import av
import jax
import numpy as np
import pytest

from dreamer4_jax import actions as A
from dreamer4_jax.data import collect, vpt
from dreamer4_jax.data.build import build_dataset
from dreamer4_jax.data.config import default_data_config
from dreamer4_jax.data.pipeline import batch_spec, make_dataset

T_FRAMES, SRC_H, SRC_W = 6, 40, 72


def write_mp4(path, num_frames=T_FRAMES, size=(SRC_H, SRC_W)):
    """Solid frames: red = 40 * t, green = 200 (so frame order is visible after decoding)."""
    with av.open(str(path), 'w') as c:
        s = c.add_stream('mpeg4', rate=20)
        s.height, s.width = size
        s.pix_fmt = 'yuv420p'
        for t in range(num_frames):
            rgb = np.zeros((*size, 3), np.uint8)
            rgb[..., 0], rgb[..., 1] = 40 * t, 200
            for packet in s.encode(av.VideoFrame.from_ndarray(rgb, format='rgb24')):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def tick(keys=(), buttons=(), dx=0.0, dy=0.0, hotbar=0, stats=None, new_buttons=(), gui=None):
    """One jsonl line as the VPT recorder writes it (gui: mouse (x, y) of an open GUI)."""
    x, y = gui or (0.0, 0.0)
    return {
        'mouse': {'x': x, 'y': y, 'dx': dx, 'dy': dy, 'buttons': list(buttons),
                  'newButtons': list(new_buttons)},
        'keyboard': {'keys': list(keys), 'newKeys': [], 'chars': ''},
        'hotbar': hotbar,
        'isGuiOpen': gui is not None,
        'stats': stats or {},
    }  # fmt: skip


LOG = 'minecraft.mine_block:minecraft.oak_log'
PLANKS = 'minecraft.craft_item:minecraft.oak_planks'
TICKS = [
    tick(keys=['key.keyboard.w'], stats={LOG: 0}),
    tick(keys=['key.keyboard.w', 'key.keyboard.space'], buttons=[0], dx=1000.0, stats={LOG: 0}),
    tick(buttons=[1], dy=-1000.0, stats={LOG: 0}),
    tick(hotbar=3, stats={LOG: 1}),  # scroll to slot 4; a log is mined
    tick(keys=['key.keyboard.2', 'key.keyboard.f'], hotbar=3, dx=20 / 3, stats={LOG: 1, PLANKS: 4}),
    tick(keys=['key.keyboard.unknown'], hotbar=3, stats={LOG: 1, PLANKS: 4}),
]


def write_jsonl(path, ticks=TICKS):
    path.write_text('\n'.join(json.dumps(t) for t in ticks) + '\n')


@pytest.fixture
def recording(tmp_path):
    write_mp4(tmp_path / 'rec0.mp4')
    write_jsonl(tmp_path / 'rec0.jsonl')
    return tmp_path / 'rec0.mp4', tmp_path / 'rec0.jsonl'


def key_index(*names):
    return sorted(A.VPT_KEYS.index(n) for n in names)


def test_actions_keys_mouse_and_hotbar(recording):
    ep = vpt.read_recording(*recording, height=32, width=48)
    keys, mouse = ep['action']['keys'], ep['action']['mouse']
    assert keys.shape == (6, 23) and keys.dtype == np.int32 and mouse.dtype == np.int32
    expect = [
        key_index('forward'),
        key_index('forward', 'jump', 'attack'),
        key_index('use'),
        key_index('hotbar.4'),  # slot change without a key press (scroll wheel)
        key_index('hotbar.2', 'swapHands'),
        [],  # unmapped keys are ignored
    ]
    for t, want in enumerate(expect):
        assert np.flatnonzero(keys[t]).tolist() == want, t
    # Mouse: 1000 px right -> yaw bin 10; 1000 px up -> pitch bin 0; 20/3 px = 1 degree -> bin 6.
    assert mouse.tolist() == [60, 65, 5, 60, 61, 60]
    A.validate(ep['action'], A.minecraft_action_space(), ep['has_action'])


def test_task_events_from_stat_counters(recording):
    ep = vpt.read_recording(*recording, height=32, width=48)
    ev = ep['task_event']
    assert ev.shape == (6, len(vpt.MINECRAFT_TASKS))
    log, planks = vpt.MINECRAFT_TASKS.index('mine_log'), vpt.MINECRAFT_TASKS.index('craft_planks')
    assert np.argwhere(ev).tolist() == [[3, log], [4, planks]]
    assert ep['is_first'].tolist() == [True] + [False] * 5
    assert ep['is_last'].tolist() == [False] * 5 + [True]
    assert ep['has_action'].all() and not ep['is_terminal'].any() and not ep['reward'].any()


def test_frames_resized_with_aspect_and_padded(recording):
    frames = vpt.read_recording(*recording, height=32, width=48)['image']
    # 40x72 fits 32x48 as 27x48 (scale 2/3): rows 27..31 are zero padding.
    assert frames.shape == (6, 32, 48, 3) and frames.dtype == np.uint8
    assert vpt.fit_and_pad_size((40, 72), (32, 48)) == (27, 48)
    assert not frames[:, 27:].any()
    red = frames[:, 10, 20, 0].astype(int)
    np.testing.assert_allclose(red, 40 * np.arange(6), atol=12)  # lossy codec
    assert np.all(np.abs(frames[:, 10, 20, 1].astype(int) - 200) < 12)


def test_clear_errors_for_bad_jsonl(tmp_path, recording):
    video, _ = recording
    empty = tmp_path / 'empty.jsonl'
    empty.write_text('\n')
    with pytest.raises(ValueError, match='is empty'):
        vpt.read_recording(video, empty, height=32, width=48)
    cut = tmp_path / 'cut.jsonl'
    text = '\n'.join(json.dumps(t) for t in TICKS)
    cut.write_text(text[:-25])
    with pytest.raises(ValueError, match=r'last line \(the file looks truncated\) 6 of 6'):
        vpt.read_recording(video, cut, height=32, width=48)
    short = tmp_path / 'short.jsonl'
    write_jsonl(short, TICKS[:4])
    with pytest.raises(ValueError, match='6 video frames but 4 jsonl lines'):
        vpt.read_recording(video, short, height=32, width=48)
    ep = vpt.read_recording(video, short, height=32, width=48, strict=False)
    assert len(ep['image']) == 4 and ep['is_last'][-1]
    with pytest.raises(FileNotFoundError, match='does not exist'):
        vpt.read_recording(video, tmp_path / 'missing.jsonl', height=32, width=48)
    (tmp_path / 'lonely.mp4').write_bytes(b'')
    with pytest.raises(FileNotFoundError, match='lonely.mp4 has no actions file'):
        vpt.list_recordings(tmp_path)


def test_vpt_dataset_builds_and_batches(tmp_path):
    rec = tmp_path / 'recordings'
    rec.mkdir()
    for i in range(3):
        write_mp4(rec / f'r{i}.mp4')
        write_jsonl(rec / f'r{i}.jsonl')
    cfg = default_data_config()
    cfg.source, cfg.vpt.dir = 'vpt', str(rec)
    cfg.dir, cfg.name = str(tmp_path / 'data'), 'vpt_tiny'
    cfg.resolution, cfg.width = 32, 48
    cfg.eval_fraction = 0.34
    path = build_dataset(cfg, progress=False)
    card = json.loads((path / 'dataset_card.json').read_text())
    assert card['episodes'] == 3 and card['frames'] == 18
    assert card['splits']['train']['episodes'] == 2 and card['splits']['eval']['episodes'] == 1
    assert card['overall']['coverage']['mine_log'] == 1.0
    batch = next(iter(make_dataset(cfg, batch_size_per_process=2, window_length=4)))
    assert batch['image'].shape == (2, 4, 32, 48, 3)
    assert batch['action']['keys'].shape == (2, 4, 23) and batch['action']['mouse'].shape == (2, 4)
    assert batch['task_reward'].shape == (2, 4, 20)
    A.validate(batch['action'], A.minecraft_action_space(), batch['has_action'])
    spec = jax.tree.map(lambda s: (s.shape, s.dtype), batch_spec(cfg, 2, window_length=4))
    assert spec == jax.tree.map(lambda x: (x.shape, np.dtype(x.dtype)), batch)


def test_command_line_builds_reuses_and_rebuilds(tmp_path, capsys):
    rec = tmp_path / 'recordings'
    rec.mkdir()
    write_mp4(rec / 'r0.mp4')
    write_jsonl(rec / 'r0.jsonl')
    args = ['--source=vpt', f'--vpt_dir={rec}', f'--dir={tmp_path / "data"}', '--name=cli',
            '--resolution=32', '--width=48', '--eval_fraction=0', '--no_progress']  # fmt: skip
    assert collect.main(args) == 0
    out = capsys.readouterr().out
    assert '# Dataset card: cli' in out and '| mine_log | 1.00 | 1.00 |' in out
    card = tmp_path / 'data' / 'cli' / 'dataset_card.json'
    stamp = card.stat().st_mtime_ns
    assert collect.main(args) == 0 and card.stat().st_mtime_ns == stamp  # reused
    assert collect.main([*args, '--force']) == 0 and card.stat().st_mtime_ns != stamp
    capsys.readouterr()
    assert collect.main([*args[:-2], '--eval_fraction=0.5', '--no_progress']) == 2  # user error
    assert 'different settings' in capsys.readouterr().err
    assert collect.parse_policy_mix('random=0.25, seeker=0.75') == {'random': 0.25, 'seeker': 0.75}
    with pytest.raises(ValueError, match='name=weight'):
        collect.parse_policy_mix('random')


def attack_column(ep):
    return ep['action']['keys'][:, A.VPT_KEYS.index('attack')].tolist()


def test_stuck_attack_is_released_until_a_new_press(tmp_path):
    write_mp4(tmp_path / 'r.mp4')
    ticks = [
        tick(buttons=[0], new_buttons=[0]),  # the recording starts with attack down: stuck
        tick(buttons=[0, 1], new_buttons=[1]),  # still stuck; 'use' is a real press
        tick(buttons=[0]),
        tick(buttons=[0], new_buttons=[0]),  # pressed anew: real from here on
        tick(buttons=[0]),
        tick(),
    ]
    write_jsonl(tmp_path / 'r.jsonl', ticks)
    ep = vpt.read_recording(tmp_path / 'r.mp4', tmp_path / 'r.jsonl', height=32, width=48)
    assert attack_column(ep) == [0, 0, 0, 1, 1, 0]
    assert ep['action']['keys'][1, A.VPT_KEYS.index('use')] == 1
    assert vpt.stuck_attack_ticks(ticks).tolist() == [True, True, True, False, False, False]
    kept = vpt.read_recording(tmp_path / 'r.mp4', tmp_path / 'r.jsonl', height=32, width=48,
                              release_stuck_attack=False)  # fmt: skip
    assert attack_column(kept) == [1, 1, 1, 1, 1, 0]
    # Attack held at the start without a new press of it on the first tick is not stuck, and
    # neither is a first press together with another button (the reference needs exactly [0]).
    for first in (tick(buttons=[0]), tick(buttons=[0, 1], new_buttons=[0, 1])):
        assert not vpt.stuck_attack_ticks([first, tick(buttons=[0])]).any()


def test_draw_cursor_blends_and_clips():
    frame = np.full((10, 12, 3), 100, np.uint8)
    rgb = np.full((16, 16, 3), 255, np.uint8)
    alpha = np.zeros((16, 16, 1))
    alpha[0, 0], alpha[0, 1], alpha[1, 0] = 1.0, 0.5, 0.25
    out = vpt.draw_cursor(frame, (rgb, alpha), 3, 2)
    assert out[2, 3].tolist() == [255] * 3  # opaque
    assert out[2, 4].tolist() == [177] * 3  # 100 * 0.5 + 255 * 0.5 = 177.5, truncated
    assert out[3, 3].tolist() == [138] * 3  # 100 * 0.75 + 255 * 0.25 = 138.75
    changed = np.argwhere((out != frame).any(-1)).tolist()
    assert changed == [[2, 3], [2, 4], [3, 3]] and frame[2, 3, 0] == 100  # input untouched
    # Partly outside the frame: only the visible part is drawn; fully outside: unchanged.
    edge = vpt.draw_cursor(frame, (rgb, alpha), -1, 9)
    assert np.argwhere((edge != frame).any(-1)).tolist() == [[9, 0]]  # alpha[0, 1]
    assert (vpt.draw_cursor(frame, (rgb, alpha), 12, 0) == frame).all()
    # The built-in arrow: 16x16, tip opaque black outline, white fill, transparent corner.
    arrow_rgb, arrow_alpha = vpt.load_cursor()
    assert arrow_rgb.shape == (16, 16, 3) and arrow_alpha.shape == (16, 16, 1)
    assert arrow_alpha[0, 0, 0] == 1 and arrow_rgb[0, 0].tolist() == [0, 0, 0]
    assert arrow_alpha[5, 2, 0] == 1 and arrow_rgb[5, 2].tolist() == [255, 255, 255]
    assert arrow_alpha[0, 15, 0] == 0


def test_cursor_file_png_is_used(tmp_path):
    import imageio.v3 as iio

    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    iio.imwrite(tmp_path / 'cursor.png', rgba)
    rgb, alpha = vpt.load_cursor(tmp_path / 'cursor.png')
    assert rgb[..., 0].min() == 200 and (alpha == 1).all()
    iio.imwrite(tmp_path / 'rgb.png', rgba[..., :3])
    with pytest.raises(ValueError, match='must be RGBA'):
        vpt.load_cursor(tmp_path / 'rgb.png')


def test_cursor_drawn_into_frames_while_gui_open(tmp_path):
    size = (90, 160)  # video height 90: GUI mouse pixels (720 lines) scale by 1/8
    write_mp4(tmp_path / 'r.mp4', size=size)
    ticks = [tick() for _ in range(T_FRAMES)]
    ticks[2] = tick(gui=(400.0, 240.0))  # -> (50, 30) in the video
    ticks[3] = tick(gui=(1270.0, 700.0))  # -> (158, 87): clipped at the bottom-right corner
    write_jsonl(tmp_path / 'r.jsonl', ticks)
    paths = tmp_path / 'r.mp4', tmp_path / 'r.jsonl'
    cursor = vpt.load_cursor()
    plain = vpt.read_recording(*paths, height=90, width=160)['image']
    drawn = vpt.read_recording(*paths, height=90, width=160, cursor=cursor)['image']
    for t in (0, 1, 4, 5):
        np.testing.assert_array_equal(drawn[t], plain[t])
    np.testing.assert_array_equal(drawn[2], vpt.draw_cursor(plain[2], cursor, 50, 30))
    np.testing.assert_array_equal(drawn[3], vpt.draw_cursor(plain[3], cursor, 158, 87))
    assert drawn[2, 30, 50].tolist() == [0, 0, 0] and drawn[2, 35, 52].tolist() == [255] * 3
    # Drawn at the source resolution, then resized with the frame (90x160 -> 45x80).
    small = vpt.read_recording(*paths, height=45, width=80, cursor=cursor)['image']
    small_plain = vpt.read_recording(*paths, height=45, width=80)['image']
    diff = np.argwhere(np.abs(small[2].astype(int) - small_plain[2]).max(-1) > 20)
    assert diff.size and diff.min(0).tolist() >= [15, 25] and diff.max(0).tolist() <= [23, 33]


def test_vpt_build_settings_record_the_reference_steps(tmp_path):
    rec = tmp_path / 'recordings'
    rec.mkdir()
    write_mp4(rec / 'r0.mp4')
    stuck = [tick(buttons=[0], new_buttons=[0], gui=(0.0, 0.0))]  # attack stuck throughout
    write_jsonl(rec / 'r0.jsonl', stuck + [tick(buttons=[0], gui=(0.0, 0.0))] * 5)
    cfg = default_data_config()
    cfg.source, cfg.vpt.dir = 'vpt', str(rec)
    cfg.dir, cfg.name = str(tmp_path / 'data'), 'gui'
    cfg.resolution, cfg.width, cfg.eval_fraction = 40, 72, 0.0
    path = build_dataset(cfg, progress=False)
    card = json.loads((path / 'dataset_card.json').read_text())
    assert card['settings']['draw_cursor'] and card['settings']['release_stuck_attack']
    batch = next(iter(make_dataset(cfg, batch_size_per_process=1, window_length=6)))
    assert not batch['action']['keys'][..., A.VPT_KEYS.index('attack')].any()
    assert batch['image'][0, :, 0, 0].max() < 30  # the arrow's black tip at (0, 0)
    cfg.vpt.cursor_file = str(tmp_path / 'missing.png')
    with pytest.raises(ValueError, match='vpt.cursor_file'):
        build_dataset(cfg, progress=False)
