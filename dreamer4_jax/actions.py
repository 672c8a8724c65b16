"""Action spaces: the factorized action format shared by data, dynamics model and policy heads.

PAPER 5.1 / 5.3: an action is a set of components; each categorical or binary component is embedded
by lookup, each continuous component by a linear projection, and the embeddings are summed. The
policy head (PAPER 9.2) puts one distribution per component (categorical, vectorized Bernoulli, or
continuous) and sums their log-probabilities.

Array format of one action (a dict keyed by component name), for leading dims [...] (e.g. [B, T]):
  categorical: int32 [...]        class index in [0, size)
  binary:      int32 [...,  size] each entry 0 or 1 (int32, not bool, so the placeholder fits)
  continuous:  float32 [..., size]

Unlabeled steps (`has_action` False, DESIGN.md section 3) carry a fixed placeholder that is never a
valid action: -1 for categorical and binary components, NaN for continuous ones. No code path may
read it; `validate` rejects it wherever `has_action` is True.

Minecraft (PAPER 5.3): 23 binary keyboard / mouse-button variables plus the mouse movement as one
121-way categorical (VPT "foveated" mu-law discretization, 11 bins per axis). The conversion from
the VPT contractor recordings lives here; `dreamer4_jax.data.vpt` reads the files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

KINDS = ('categorical', 'binary', 'continuous')


@dataclasses.dataclass(frozen=True)
class ActionComponent:
    """One factor of an action: `kind` in KINDS, `size` = classes, variables or dimensions."""

    name: str
    kind: str
    size: int

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f'action component {self.name!r}: kind {self.kind!r} not in {KINDS}')
        if self.size < 1:
            raise ValueError(f'action component {self.name!r}: size must be >= 1, got {self.size}')

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Trailing shape of one action of this component (() for categorical)."""
        return () if self.kind == 'categorical' else (self.size,)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32) if self.kind == 'continuous' else np.dtype(np.int32)

    @property
    def placeholder(self) -> float | int:
        """Value stored where `has_action` is False; out of range on purpose."""
        return float('nan') if self.kind == 'continuous' else -1


@dataclasses.dataclass(frozen=True)
class ActionSpace:
    """An ordered tuple of action components with unique names."""

    components: tuple[ActionComponent, ...]

    def __post_init__(self):
        names = [c.name for c in self.components]
        if not names or len(set(names)) != len(names):
            raise ValueError(f'action space needs unique, non-empty component names, got {names}')

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components)

    def __getitem__(self, name: str) -> ActionComponent:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f'no action component {name!r}; components are {self.names}')

    def placeholder(self, batch_shape: Sequence[int]) -> dict[str, np.ndarray]:
        """Placeholder actions (never valid) of leading shape `batch_shape`."""
        return {
            c.name: np.full((*batch_shape, *c.event_shape), c.placeholder, c.dtype)
            for c in self.components
        }

    def to_json(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(c) for c in self.components]

    @classmethod
    def from_json(cls, items: Sequence[Mapping[str, Any]]) -> ActionSpace:
        return cls(tuple(ActionComponent(i['name'], i['kind'], int(i['size'])) for i in items))


def craftax_action_space() -> ActionSpace:
    """Craftax-Classic: one categorical over its 17 actions (NOOP, moves, DO, SLEEP, ...)."""
    return ActionSpace((ActionComponent('discrete', 'categorical', 17),))


def continuous_action_space(dim: int) -> ActionSpace:
    """A single continuous component, e.g. SOAR's 7-D end-effector deltas (PAPER 13)."""
    return ActionSpace((ActionComponent('continuous', 'continuous', dim),))


def mask_actions(
    actions: Mapping[str, np.ndarray], has_action: np.ndarray, space: ActionSpace
) -> dict[str, np.ndarray]:
    """Overwrites every step with has_action False by the placeholder (never fabricates)."""
    out = {}
    for c in space.components:
        a = np.asarray(actions[c.name], c.dtype)
        keep = np.asarray(has_action, bool).reshape(has_action.shape + (1,) * len(c.event_shape))
        out[c.name] = np.where(keep, a, np.asarray(c.placeholder, c.dtype))
    return out


def validate(
    actions: Mapping[str, Any], space: ActionSpace, has_action: np.ndarray | None = None
) -> None:
    """Raises ValueError naming the component and the bad value if `actions` is not in `space`.

    Steps where `has_action` is False must hold the placeholder and are otherwise ignored; with
    `has_action=None` every step must hold a valid action.
    """
    if set(actions) != set(space.names):
        raise ValueError(
            f'action components {sorted(actions)} do not match the space {sorted(space.names)}'
        )
    for c in space.components:
        a = np.asarray(actions[c.name])
        nd = len(c.event_shape)
        if nd and a.shape[-nd:] != c.event_shape:
            raise ValueError(
                f'action {c.name!r}: trailing shape {a.shape[-nd:]} != {c.event_shape} '
                f'(full shape {a.shape})'
            )
        if c.kind == 'continuous':
            if not np.issubdtype(a.dtype, np.floating):
                raise ValueError(f'action {c.name!r}: continuous needs floats, got {a.dtype}')
        elif not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f'action {c.name!r}: {c.kind} needs integers, got {a.dtype}')
        batch_shape = a.shape[: a.ndim - nd]
        if has_action is None:
            labeled = np.ones(batch_shape, bool)
        else:
            labeled = np.broadcast_to(np.asarray(has_action, bool), batch_shape)
        lab = a[labeled]
        if c.kind == 'categorical':
            bad = (lab < 0) | (lab >= c.size)
            allowed = f'integers in [0, {c.size})'
        elif c.kind == 'binary':
            bad = (lab != 0) & (lab != 1)
            allowed = '0 or 1'
        else:
            bad = ~np.isfinite(lab)
            allowed = 'finite floats'
        if np.any(bad):
            raise ValueError(
                f'action {c.name!r} ({c.kind}, size {c.size}) has out-of-range values '
                f'{np.unique(lab[bad])[:8].tolist()} at labeled steps; allowed: {allowed}. '
                'Steps without an action need has_action=False (placeholder '
                f'{c.placeholder}).'
            )
        unl = a[~labeled]
        if c.kind == 'continuous':
            not_placeholder = ~np.isnan(unl)
        else:
            not_placeholder = unl != c.placeholder
        if np.any(not_placeholder):
            raise ValueError(
                f'action {c.name!r}: steps with has_action=False must hold the placeholder '
                f'{c.placeholder}, found {np.unique(unl[not_placeholder])[:8].tolist()}'
            )


# ----------------------------------------------------------------------------------------------
# Minecraft / VPT (PAPER 5.3).

# The 23 binary variables, in MineRL's alphabetical order: 20 keyboard keys (ESC, back, drop,
# forward, hotbar.1-9, inventory, jump, left, right, sneak, sprint, swapHands) and 3 mouse buttons
# (attack = left, use = right, pickItem = middle).
VPT_KEYS: tuple[str, ...] = (
    'ESC', 'attack', 'back', 'drop', 'forward',
    *(f'hotbar.{i}' for i in range(1, 10)),
    'inventory', 'jump', 'left', 'pickItem', 'right', 'sneak', 'sprint', 'swapHands', 'use',
)  # fmt: skip

# Contractor-recording names -> VPT_KEYS entries.
VPT_KEYBOARD_MAP: dict[str, str] = {
    'key.keyboard.escape': 'ESC',
    'key.keyboard.s': 'back',
    'key.keyboard.q': 'drop',
    'key.keyboard.w': 'forward',
    **{f'key.keyboard.{i}': f'hotbar.{i}' for i in range(1, 10)},
    'key.keyboard.e': 'inventory',
    'key.keyboard.space': 'jump',
    'key.keyboard.a': 'left',
    'key.keyboard.d': 'right',
    'key.keyboard.left.shift': 'sneak',
    'key.keyboard.left.control': 'sprint',
    'key.keyboard.f': 'swapHands',
}
VPT_MOUSE_BUTTON_MAP: dict[int, str] = {0: 'attack', 1: 'use', 2: 'pickItem'}

# [U] choices of PAPER 5.3 (the paper says "mu-law, 11 bins per axis" only); these are the
# values of the public VPT release: mu = 10, angles clipped to +-10 degrees per tick, recorded
# mouse pixels scaled by 360 / 2400 degrees per pixel.
VPT_MOUSE_BINS = 11
VPT_MOUSE_MU = 10.0
VPT_MOUSE_MAX_DEGREES = 10.0
VPT_DEGREES_PER_PIXEL = 360.0 / 2400.0


def minecraft_action_space() -> ActionSpace:
    """PAPER 5.3: 23 binary keys/buttons + one 121-way mouse categorical."""
    return ActionSpace(
        (
            ActionComponent('keys', 'binary', len(VPT_KEYS)),
            ActionComponent('mouse', 'categorical', VPT_MOUSE_BINS**2),
        )
    )


def mouse_angle_to_bin(degrees: np.ndarray) -> np.ndarray:
    """Mu-law bin in [0, 11) of a per-tick camera angle in degrees (5 = no motion)."""
    half = (VPT_MOUSE_BINS - 1) / 2
    x = np.clip(np.asarray(degrees, np.float64), -VPT_MOUSE_MAX_DEGREES, VPT_MOUSE_MAX_DEGREES)
    x = x / VPT_MOUSE_MAX_DEGREES
    # mu-law companding keeps fine resolution near zero (small corrections are frequent).
    c = np.sign(x) * np.log1p(VPT_MOUSE_MU * np.abs(x)) / np.log1p(VPT_MOUSE_MU)
    return np.round(c * half + half).astype(np.int32)


def mouse_bin_to_angle(bins: np.ndarray) -> np.ndarray:
    """Inverse of `mouse_angle_to_bin` at bin centres (degrees)."""
    half = (VPT_MOUSE_BINS - 1) / 2
    c = np.asarray(bins, np.float64) / half - 1.0
    x = np.sign(c) * np.expm1(np.abs(c) * np.log1p(VPT_MOUSE_MU)) / VPT_MOUSE_MU
    return (x * VPT_MOUSE_MAX_DEGREES).astype(np.float32)


def mouse_to_category(dx_pixels: np.ndarray, dy_pixels: np.ndarray) -> np.ndarray:
    """Recorded mouse motion (pixels) -> one of 121 classes: pitch_bin * 11 + yaw_bin.

    dy (pitch) is the row and dx (yaw) the column; 60 means no motion.
    """
    yaw = mouse_angle_to_bin(np.asarray(dx_pixels, np.float64) * VPT_DEGREES_PER_PIXEL)
    pitch = mouse_angle_to_bin(np.asarray(dy_pixels, np.float64) * VPT_DEGREES_PER_PIXEL)
    return (pitch * VPT_MOUSE_BINS + yaw).astype(np.int32)


def category_to_mouse_degrees(category: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `mouse_to_category` at bin centres: (yaw, pitch) in degrees."""
    pitch_bin, yaw_bin = np.divmod(np.asarray(category, np.int32), VPT_MOUSE_BINS)
    return mouse_bin_to_angle(yaw_bin), mouse_bin_to_angle(pitch_bin)


def keys_to_binary(pressed: Sequence[str]) -> np.ndarray:
    """Names from VPT_KEYS -> int32 [23] 0/1 vector; unknown names raise."""
    out = np.zeros(len(VPT_KEYS), np.int32)
    for name in pressed:
        if name not in VPT_KEYS:
            raise ValueError(f'unknown VPT key {name!r}; known keys are {VPT_KEYS}')
        out[VPT_KEYS.index(name)] = 1
    return out
