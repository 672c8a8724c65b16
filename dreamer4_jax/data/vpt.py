"""Reader for Minecraft VPT contractor recordings: <id>.mp4 + <id>.jsonl -> the episode schema.

Dimension keys: T ticks (= video frames, 20 per second), H x W stored frame size, K = 23 keys.

Layout (the public contractor release): one mp4 video and one jsonl file per recording; line t of
the jsonl holds the inputs of tick t:
  {"mouse": {"dx": .., "dy": .., "buttons": [0, ..]}, "keyboard": {"keys": ["key.keyboard.w"]},
   "hotbar": 0..8, "stats": {"minecraft.mine_block:minecraft.oak_log": 3, ...}, ...}
Only these fields are read; missing optional fields (hotbar, stats, buttons) count as empty.

Alignment (DESIGN.md section 3): frame t is the screen the player saw when issuing the inputs of
line t, so action[t] = line t. [U] stats counters of line t describe the game state shown in frame
t, so a counter increase between lines t-1 and t is a task event at t (the transition into frame
t), like Craftax achievement unlocks. Unlike Craftax, every increase is an event (tasks can
repeat); PAPER 11 tasks map to counters in TASK_STATS ([U], the paper gives no mapping).

Actions (PAPER 5.3, `dreamer4_jax.actions`): keys int32 [T, 23] from pressed keys and mouse
buttons, plus hotbar.N when the selected slot changes to N without a key press (scroll wheel);
mouse int32 [T] in [0, 121) from (dx, dy). Every tick is kept, including null actions, because the
world model needs the full video.

Frames are resized with their aspect ratio kept to fit H x W, then zero-padded at the bottom and
right (PAPER 4.2 pads 360x640 to 384x640).

Two steps of the reference data loader (openai/Video-Pre-Training, data_loader.py) are applied:
- Cursor: the recorder does not capture the mouse cursor, so while a GUI is open ("isGuiOpen")
  a 16x16 cursor is drawn into the frame at the recorded mouse position ("mouse" x, y are in
  the 1280x720 recording resolution; scaled by video height / 720), before resizing. Without it
  GUI crafting is invisible to the world model and the policy. The reference draws its
  mouse_cursor_white_16x16.png; `data.vpt.cursor_file` loads that PNG (RGBA) if you have it,
  otherwise a white arrow with a black outline of the same size is drawn (CURSOR_ARROW).
- Stuck attack: some recordings start with the attack button held down (the first tick's
  "newButtons" is [0]) although the player is not attacking; it stays down until the player
  presses attack anew. Until that tick the attack button is dropped (the tick of the new press
  keeps it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import imageio.v3 as iio
import numpy as np

from dreamer4_jax import actions as A
from dreamer4_jax.data.config import DataError, MissingDataError

# The recorder's GUI mouse coordinates are pixels of a 720-line screen (reference data loader).
RECORDING_HEIGHT_PX = 720

# A 16x16 arrow cursor: '#' black outline, 'o' white fill, '.' transparent (the tip at (0, 0)
# is the mouse position, as with the reference's top-left-anchored cursor image).
CURSOR_ARROW = (
    '#...............',
    '##..............',
    '#o#.............',
    '#oo#............',
    '#ooo#...........',
    '#oooo#..........',
    '#ooooo#.........',
    '#oooooo#........',
    '#ooooooo#.......',
    '#oooooooo#......',
    '#ooooo#####.....',
    '#oo#oo#.........',
    '#o#.#oo#........',
    '##..#oo#........',
    '#....#oo#.......',
    '......##........',
)  # fmt: skip

MINECRAFT_TASKS: tuple[str, ...] = (
    'mine_log', 'mine_cobblestone', 'mine_iron_ore', 'mine_coal', 'mine_diamond',
    'craft_planks', 'craft_stick', 'craft_crafting_table', 'craft_furnace', 'craft_iron_ingot',
    'craft_wooden_pickaxe', 'craft_stone_pickaxe', 'craft_iron_pickaxe',
    'open_crafting_table', 'open_furnace', 'place_crafting_table', 'place_furnace',
    'use_wooden_pickaxe', 'use_stone_pickaxe', 'use_iron_pickaxe',
)  # fmt: skip

# task -> (stat category, item names; a '*' prefix matches any item ending in the rest).
TASK_STATS: dict[str, tuple[str, tuple[str, ...]]] = {
    'mine_log': ('mine_block', ('*_log',)),
    'mine_cobblestone': ('mine_block', ('stone', 'cobblestone')),
    'mine_iron_ore': ('mine_block', ('iron_ore', 'deepslate_iron_ore')),
    'mine_coal': ('mine_block', ('coal_ore', 'deepslate_coal_ore')),
    'mine_diamond': ('mine_block', ('diamond_ore', 'deepslate_diamond_ore')),
    'craft_planks': ('craft_item', ('*_planks',)),
    'craft_stick': ('craft_item', ('stick',)),
    'craft_crafting_table': ('craft_item', ('crafting_table',)),
    'craft_furnace': ('craft_item', ('furnace',)),
    'craft_iron_ingot': ('craft_item', ('iron_ingot',)),
    'craft_wooden_pickaxe': ('craft_item', ('wooden_pickaxe',)),
    'craft_stone_pickaxe': ('craft_item', ('stone_pickaxe',)),
    'craft_iron_pickaxe': ('craft_item', ('iron_pickaxe',)),
    'open_crafting_table': ('custom', ('interact_with_crafting_table',)),
    'open_furnace': ('custom', ('interact_with_furnace',)),
    'place_crafting_table': ('use_item', ('crafting_table',)),
    'place_furnace': ('use_item', ('furnace',)),
    'use_wooden_pickaxe': ('use_item', ('wooden_pickaxe',)),
    'use_stone_pickaxe': ('use_item', ('stone_pickaxe',)),
    'use_iron_pickaxe': ('use_item', ('iron_pickaxe',)),
}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Parses a recording's jsonl; clear errors for a missing, empty or truncated file."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f'VPT actions file {path} does not exist')
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f'VPT actions file {path} is empty: re-download or drop this recording')
    ticks = []
    for i, line in enumerate(lines):
        try:
            tick = json.loads(line)
        except json.JSONDecodeError as e:
            where = 'last line (the file looks truncated)' if i == len(lines) - 1 else 'line'
            raise DataError(
                f'VPT actions file {path}: {where} {i + 1} of {len(lines)} is not valid JSON '
                f'({e.msg}); re-download the recording or drop it'
            ) from None
        if not isinstance(tick, dict) or 'mouse' not in tick or 'keyboard' not in tick:
            raise DataError(f'VPT actions file {path}: line {i + 1} lacks "mouse"/"keyboard"')
        ticks.append(tick)
    return ticks


def stuck_attack_ticks(ticks: Sequence[dict[str, Any]]) -> np.ndarray:
    """bool [T]: ticks whose attack button is held only because it was stuck at the start.

    Reference loader rule: if the first tick's "newButtons" is exactly [0], attack counts as
    stuck until a later tick lists 0 in "newButtons" (a real press, which is kept).
    """
    out = np.zeros(len(ticks), bool)
    stuck = bool(ticks) and list(ticks[0]['mouse'].get('newButtons') or ()) == [0]
    for t, tick in enumerate(ticks):
        if t > 0 and stuck and 0 in (tick['mouse'].get('newButtons') or ()):
            stuck = False
        out[t] = stuck
    return out


def convert_actions(
    ticks: Sequence[dict[str, Any]], *, release_stuck_attack: bool = True
) -> dict[str, np.ndarray]:
    """Ticks -> {'keys': int32 [T, 23], 'mouse': int32 [T]} (see module doc)."""
    keys = np.zeros((len(ticks), len(A.VPT_KEYS)), np.int32)
    dx = np.zeros(len(ticks), np.float64)
    dy = np.zeros(len(ticks), np.float64)
    stuck = stuck_attack_ticks(ticks) if release_stuck_attack else np.zeros(len(ticks), bool)
    last_hotbar = None
    for t, tick in enumerate(ticks):
        names = [A.VPT_KEYBOARD_MAP[k] for k in tick['keyboard'].get('keys', ())
                 if k in A.VPT_KEYBOARD_MAP]  # fmt: skip
        names += [A.VPT_MOUSE_BUTTON_MAP[b] for b in tick['mouse'].get('buttons', ())
                  if b in A.VPT_MOUSE_BUTTON_MAP and not (stuck[t] and b == 0)]  # fmt: skip
        hotbar = tick.get('hotbar')
        if hotbar is not None and last_hotbar is not None and hotbar != last_hotbar:
            names.append(f'hotbar.{int(hotbar) + 1}')
        last_hotbar = hotbar if hotbar is not None else last_hotbar
        keys[t] = A.keys_to_binary(names)
        dx[t] = float(tick['mouse'].get('dx', 0.0))
        dy[t] = float(tick['mouse'].get('dy', 0.0))
    return {'keys': keys, 'mouse': A.mouse_to_category(dx, dy)}


def _stat_matches(key: str, category: str, items: Sequence[str]) -> bool:
    # Keys look like "minecraft.mine_block:minecraft.oak_log".
    head, _, item = key.partition(':')
    if head.split('.')[-1] != category:
        return False
    item = item.split('.')[-1]
    return any(item.endswith(p[1:]) if p.startswith('*') else item == p for p in items)


def task_events(ticks: Sequence[dict[str, Any]]) -> np.ndarray:
    """bool [T, 20]: a PAPER 11 task's counter increased between ticks t-1 and t."""
    out = np.zeros((len(ticks), len(MINECRAFT_TASKS)), bool)
    totals = np.zeros((len(ticks), len(MINECRAFT_TASKS)), np.int64)
    for t, tick in enumerate(ticks):
        for key, value in (tick.get('stats') or {}).items():
            for k, task in enumerate(MINECRAFT_TASKS):
                if _stat_matches(key, *TASK_STATS[task]):
                    totals[t, k] += int(value)
    out[1:] = totals[1:] > totals[:-1]
    return out


def fit_and_pad_size(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[int, int]:
    """Largest (h, w) with the aspect of src_hw that fits in dst_hw."""
    scale = min(dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1])
    return max(1, round(src_hw[0] * scale)), max(1, round(src_hw[1] * scale))


Cursor = tuple[np.ndarray, np.ndarray]  # (rgb uint8 [16, 16, 3], alpha float [16, 16, 1])


def load_cursor(path: str | Path | None = None) -> Cursor:
    """The cursor image: a 16x16 RGBA PNG (the reference's cursor file) or the built-in arrow."""
    if path:
        rgba = np.asarray(iio.imread(Path(path)))
        if rgba.ndim != 3 or rgba.shape[2] != 4:
            raise ValueError(f'cursor image {path} must be RGBA, got shape {rgba.shape}')
        rgba = rgba[:16, :16].astype(np.uint8)  # the reference assumes 16x16 too
        return rgba[..., :3], rgba[..., 3:] / 255.0
    ascii_art = np.array([list(row) for row in CURSOR_ARROW])
    rgb = np.where(ascii_art == 'o', 255, 0).astype(np.uint8)[..., None].repeat(3, axis=-1)
    return rgb, (ascii_art != '.').astype(np.float64)[..., None]


def gui_mouse_positions(ticks: Sequence[dict[str, Any]]) -> np.ndarray:
    """float [T, 2] mouse (x, y) in recording pixels while a GUI is open; NaN when it is closed."""
    out = np.full((len(ticks), 2), np.nan)
    for t, tick in enumerate(ticks):
        if tick.get('isGuiOpen'):
            out[t] = float(tick['mouse'].get('x', 0.0)), float(tick['mouse'].get('y', 0.0))
    return out


def draw_cursor(frame: np.ndarray, cursor: Cursor, x: int, y: int) -> np.ndarray:
    """A copy of uint8 frame [H, W, 3] with the cursor alpha-blended, its top-left at (x, y).

    Blending truncates to uint8 as the reference does; parts outside the frame are clipped.
    """
    rgb, alpha = cursor
    out = frame.copy()
    h, w = frame.shape[:2]
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + rgb.shape[0], h), min(x + rgb.shape[1], w)
    if y1 <= y0 or x1 <= x0:
        return out
    src = (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
    a = alpha[src]
    region = out[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = (region * (1 - a) + rgb[src] * a).astype(np.uint8)
    return out


def read_video(
    path: Path,
    height: int,
    width: int,
    *,
    cursor: Cursor | None = None,
    gui_mouse_xy: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 [T, height, width, 3]: frames resized to fit, zero-padded bottom/right.

    With `cursor` and `gui_mouse_xy` (float [T', 2] recording pixels, NaN = no GUI; see
    gui_mouse_positions), the cursor is drawn at the source resolution before resizing, at
    int(xy * video height / 720) as in the reference loader.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f'VPT video {path} does not exist')
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        h, w = fit_and_pad_size((stream.height, stream.width), (height, width))
        for t, frame in enumerate(container.decode(stream)):
            rgb = frame.to_ndarray(format='rgb24')
            xy = None
            if cursor is not None and gui_mouse_xy is not None and t < len(gui_mouse_xy):
                xy = gui_mouse_xy[t]
            if xy is not None and not np.isnan(xy).any():
                scale = rgb.shape[0] / RECORDING_HEIGHT_PX
                rgb = draw_cursor(rgb, cursor, int(xy[0] * scale), int(xy[1] * scale))
            if rgb.shape[:2] != (h, w):
                resized = av.VideoFrame.from_ndarray(rgb, format='rgb24')
                rgb = resized.reformat(width=w, height=h, interpolation='AREA').to_ndarray()
            frames.append(np.pad(rgb, ((0, height - h), (0, width - w), (0, 0))))
    if not frames:
        raise DataError(f'VPT video {path} has no frames')
    return np.stack(frames)


def read_recording(
    video_path: Path,
    jsonl_path: Path,
    *,
    height: int,
    width: int,
    strict: bool = True,
    cursor: Cursor | None = None,
    release_stuck_attack: bool = True,
) -> dict[str, Any]:
    """One recording -> an episode dict with the dataset schema (see dreamer4_jax.data.build).

    strict: the jsonl must have exactly one line per video frame; otherwise both are cut to the
    shorter length. cursor: drawn while a GUI is open (load_cursor(); None = not drawn).
    release_stuck_attack: drop a stuck attack button (see module doc).
    """
    ticks = read_jsonl(jsonl_path)
    frames = read_video(
        video_path, height, width, cursor=cursor, gui_mouse_xy=gui_mouse_positions(ticks)
    )
    if len(ticks) != len(frames):
        if strict or len(ticks) < 2 or len(frames) < 2:
            raise DataError(
                f'VPT recording {Path(video_path).stem}: {len(frames)} video frames but '
                f'{len(ticks)} jsonl lines (truncated download?); set data.vpt.strict=False to '
                'cut both to the shorter one'
            )
        n = min(len(ticks), len(frames))
        ticks, frames = ticks[:n], frames[:n]
    n = len(frames)
    first, last = np.zeros(n, bool), np.zeros(n, bool)
    first[0], last[-1] = True, True
    return {
        'image': frames,
        'action': convert_actions(ticks, release_stuck_attack=release_stuck_attack),
        'has_action': np.ones(n, bool),
        'reward': np.zeros(n, np.float32),
        'task_event': task_events(ticks),
        'is_first': first,
        'is_last': last,
        'is_terminal': np.zeros(n, bool),
    }


def list_recordings(directory: Path) -> list[tuple[Path, Path]]:
    """Sorted (mp4, jsonl) pairs of a folder; errors if a video lacks its jsonl or none exist."""
    directory = Path(directory)
    videos = sorted(directory.glob('*.mp4'))
    if not videos:
        raise MissingDataError(f'no <id>.mp4 recordings in {directory}')
    pairs = []
    for v in videos:
        j = v.with_suffix('.jsonl')
        if not j.is_file():
            raise MissingDataError(f'recording {v.name} has no actions file {j.name}')
        pairs.append((v, j))
    return pairs
