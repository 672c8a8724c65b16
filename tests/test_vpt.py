"""VPT contractor reader: tiny mp4 + jsonl files written here; conversion, errors, dataset build."""

import json

import av
import numpy as np
import pytest

from dreamer4_jax import actions as A
from dreamer4_jax.data import collect, vpt
from dreamer4_jax.data.build import build_dataset
from dreamer4_jax.data.config import default_data_config
from dreamer4_jax.data.pipeline import make_dataset

T_FRAMES, SRC_H, SRC_W = 6, 40, 72


def write_mp4(path, num_frames=T_FRAMES):
    """Solid frames: red = 40 * t, green = 200 (so frame order is visible after decoding)."""
    with av.open(str(path), 'w') as c:
        s = c.add_stream('mpeg4', rate=20)
        s.width, s.height, s.pix_fmt = SRC_W, SRC_H, 'yuv420p'
        for t in range(num_frames):
            rgb = np.zeros((SRC_H, SRC_W, 3), np.uint8)
            rgb[..., 0], rgb[..., 1] = 40 * t, 200
            for packet in s.encode(av.VideoFrame.from_ndarray(rgb, format='rgb24')):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def tick(keys=(), buttons=(), dx=0.0, dy=0.0, hotbar=0, stats=None):
    return {
        'mouse': {'dx': dx, 'dy': dy, 'buttons': list(buttons), 'x': 0, 'y': 0},
        'keyboard': {'keys': list(keys), 'chars': ''},
        'hotbar': hotbar,
        'isGuiOpen': False,
        'stats': stats or {},
    }


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
