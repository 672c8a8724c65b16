"""Interactive dynamics model (PAPER 5, 6.2): a block-causal axial transformer over frame blocks.

Frame block t (token order; PAPER 5.1):
  U action tokens   the action that LED TO frame t (a_{t-1}; DESIGN 3, PAPER 5.2): each action
                    component embedded into U tokens, summed with a learned base embedding;
                    frames without a label (has_action False) get only the base embedding.
  1 shortcut token  [tau embedding | d embedding], two separate tables, concatenated.
  Z latent tokens   tokenizer latents, optionally packed: N x C -> N/pack x pack*C (PAPER 4.2),
                    linearly projected to the model width.
  R register tokens learned (PAPER 3.1); R = 0 is the "no registers" ablation.
  A agent tokens    phase 2 (PAPER 9.1): a learned embedding plus an optional caller input; they
                    read every modality and nothing reads them, so A > 0 leaves the world model's
                    outputs unchanged. Their outputs are returned for the caller's heads.
`input_scale='signal'` (outside the paper; 'none' is the paper's input) multiplies each frame's
noisy latents by its signal level tau before `latent_in`: at tau = 0 the input holds nothing of
the clean frame, and a small model otherwise spends its early training cancelling that noise
(README, phase 1b; benchmarks/action_lookup.py).
The head reads the latent slots and predicts clean latents (x-prediction, PAPER 6.2) or, for the
ablation, a velocity; the meaning of the output is the objective's business (shortcut.py).

Dimension keys: B batch, T frames, N tokenizer latents per frame, C latent channels, Z packed
latent tokens (N / pack), P packed channels (pack * C), U action tokens, R registers, A agent
tokens, S tokens per frame block, D model width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamer4_jax import shortcut
from dreamer4_jax.nn import KVCache, Transformer, TransformerConfig, constrain, dynamics_layout
from dreamer4_jax.nn import param_init as _pinit

ACT_BTSD = ('batch', 'time', 'tokens', 'act_embed')
ACTION_KINDS = ('categorical', 'binary', 'continuous')
INPUT_SCALES = ('none', 'signal')
Component = tuple[str, str, int]  # (name, kind, size), what ActionSpace.components holds


def action_components(space: Any) -> tuple[Component, ...]:
    """(name, kind, size) tuples from an ActionSpace (its `.components`) or a plain sequence."""
    comps = getattr(space, 'components', space)
    out = []
    for c in comps:
        if isinstance(c, tuple | list):
            name, kind, size = c
        else:
            name, kind, size = c.name, c.kind, c.size
        out.append((str(name), str(kind), int(size)))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class DynamicsConfig:
    """Shapes of the dynamics model; the objective's switches live in shortcut.ShortcutConfig."""

    num_latents: int = 16  # N, from the tokenizer
    latent_dim: int = 16  # C, from the tokenizer
    pack: int = 1  # PAPER 4.2: 2 turns 512 x 16 into 256 x 32
    actions: tuple[Component, ...] = (('discrete', 'categorical', 17),)
    num_action_tokens: int = 1  # U (PAPER 5.1: S_a [U])
    num_registers: int = 4  # R (PAPER 5.1 [U]); 0 = the "no registers" ablation
    num_agent_tokens: int = 0  # A: 0 in phase 1; phase 2 sets it
    k_max: int = 64  # rows of the tau / d tables (PAPER 6.4)
    input_scale: str = 'none'  # 'signal': latents times tau before latent_in (module doc)
    transformer: TransformerConfig = TransformerConfig()

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f'DynamicsConfig: {msg}')

        if self.pack < 1 or self.num_latents % self.pack:
            bad(f'pack={self.pack} must be >= 1 and divide num_latents={self.num_latents}')
        if self.num_action_tokens < 1:
            bad('num_action_tokens must be >= 1 (unlabeled frames still get the base embedding)')
        if self.num_registers < 0 or self.num_agent_tokens < 0:
            bad('num_registers and num_agent_tokens must be >= 0')
        if self.transformer.width % 2:
            bad(
                f'transformer.width={self.transformer.width} must be even: the shortcut token '
                'concatenates two half-width embeddings (tau, d)'
            )
        if self.input_scale not in INPUT_SCALES:
            bad(f'input_scale must be one of {INPUT_SCALES}, got {self.input_scale!r}')
        shortcut.num_d_indices(self.k_max)  # raises for a k_max that is not a power of two
        names = [n for n, _, _ in self.actions]
        if len(set(names)) != len(names):
            bad(f'duplicate action component names {names}')
        for name, kind, size in self.actions:
            if kind not in ACTION_KINDS or size < 1:
                bad(
                    f'action component {name!r}: kind must be one of {ACTION_KINDS} and size '
                    f'>= 1, got ({kind!r}, {size})'
                )

    @property
    def num_tokens(self) -> int:
        """Z: latent tokens per frame block after packing."""
        return self.num_latents // self.pack

    @property
    def token_dim(self) -> int:
        """P: channels of a packed latent token."""
        return self.latent_dim * self.pack

    def layout(self):
        return dynamics_layout(
            self.num_tokens, self.num_action_tokens, 1, self.num_registers, self.num_agent_tokens
        )


def align_actions(
    actions: Mapping[str, jax.Array], has_action_BT: jax.Array, is_first_BT: jax.Array | None = None
):
    """Dataset convention -> frame blocks (DESIGN 3, PAPER 5.2).

    The dataset stores at t the action taken after observing frame t; block t must carry the
    action that led to frame t, i.e. a_{t-1}. Shifts every component right by one frame; block 0
    and the first frame of an episode (is_first) are marked unlabeled. Returns (actions, has_BT).
    """
    has_BT = jnp.asarray(has_action_BT, bool)
    shifted = {
        k: jnp.concatenate([jnp.zeros_like(v[:, :1]), v[:, :-1]], axis=1)
        for k, v in actions.items()
    }
    has_prev = jnp.concatenate([jnp.zeros_like(has_BT[:, :1]), has_BT[:, :-1]], axis=1)
    if is_first_BT is not None:
        has_prev &= ~jnp.asarray(is_first_BT, bool)
    return shifted, has_prev


def check_actions(
    actions: Mapping[str, Any], components: Sequence[Component], has_action_BT: Any | None = None
) -> None:
    """Host-side check of an action dict (names, shapes, categorical range where labeled)."""
    want = {n for n, _, _ in components}
    if set(actions) != want:
        raise ValueError(
            f'actions have components {sorted(actions)}, the model expects '
            f'{sorted(want)}; build the batch with the matching ActionSpace.'
        )
    for name, kind, size in components:
        a = np.asarray(actions[name])
        if kind == 'categorical':
            if a.ndim != 2:
                raise ValueError(
                    f'action {name!r} (categorical) must be [B, T] ints, got {a.shape}'
                )
            live = a if has_action_BT is None else a[np.asarray(has_action_BT, bool)]
            if live.size and (live.min() < 0 or live.max() >= size):
                raise ValueError(
                    f'action {name!r} has values in [{live.min()}, {live.max()}] '
                    f'outside [0, {size}); fix the data or the action space.'
                )
        elif a.ndim != 3 or a.shape[-1] != size:
            raise ValueError(f'action {name!r} ({kind}) must be [B, T, {size}], got {a.shape}')


class ActionEmbed(nn.Module):
    """Action tokens [B, T, U, D]: base + has_action * sum of component embeddings (PAPER 5.1)."""

    components: tuple[Component, ...]
    num_tokens: int
    width: int

    @nn.compact
    def __call__(self, actions: Mapping[str, jax.Array], has_BT: jax.Array) -> jax.Array:
        u, d = self.num_tokens, self.width
        emb = nn.initializers.normal(0.02)
        base = self.param('base', _pinit(emb, (None, 'embed')), (u, d), jnp.float32)
        missing = {n for n, _, _ in self.components} - set(actions)
        if missing:
            raise ValueError(f'actions lack components {sorted(missing)}; got {sorted(actions)}')
        has_BT = jnp.asarray(has_BT, bool)
        total = None
        for name, kind, size in self.components:
            a = actions[name]
            # Unlabeled entries are zeroed BEFORE use so any stored value (garbage, NaN, -1)
            # cannot leak into the sum, not even as NaN * 0.
            if kind == 'categorical':
                table = self.param(
                    f'{name}_table',
                    _pinit(emb, ('vocab', None, 'embed')),
                    (size, u, d),
                    jnp.float32,
                )
                idx = jnp.clip(jnp.where(has_BT, a, 0).astype(jnp.int32), 0, size - 1)
                e = jnp.take(table, idx, axis=0)
            else:
                w = self.param(
                    f'{name}_proj',
                    _pinit(nn.initializers.normal(1.0 / np.sqrt(size)), ('io', None, 'embed')),
                    (size, u, d),
                    jnp.float32,
                )
                x = jnp.where(has_BT[..., None], a.astype(jnp.float32), 0.0)
                e = jnp.einsum('btn,nud->btud', x, w)
            total = e if total is None else total + e
        if total is None:
            return jnp.broadcast_to(base, (*has_BT.shape, u, d))
        return base + jnp.where(has_BT[..., None, None], total, 0.0)


class Dynamics(nn.Module):
    """f_theta(z_tilde, tau, d, a) -> predicted clean latents (PAPER 6.2, Eq. 6)."""

    config: DynamicsConfig

    def setup(self):
        c = self.config
        d = c.transformer.width
        emb = nn.initializers.normal(0.02)
        self.action_embed = ActionEmbed(c.actions, c.num_action_tokens, d, name='action_embed')
        self.tau_table = self.param(
            'tau_table',
            _pinit(emb, ('vocab', 'embed')),
            (shortcut.num_tau_indices(c.k_max), d // 2),
            jnp.float32,
        )
        self.d_table = self.param(
            'd_table',
            _pinit(emb, ('vocab', 'embed')),
            (shortcut.num_d_indices(c.k_max), d - d // 2),
            jnp.float32,
        )
        self.latent_in = nn.Dense(
            d, kernel_init=_pinit(nn.initializers.lecun_normal(), ('io', 'embed')), name='latent_in'
        )
        if c.num_registers:
            self.registers = self.param(
                'registers', _pinit(emb, (None, 'embed')), (c.num_registers, d), jnp.float32
            )
        if c.num_agent_tokens:
            self.agent_tokens = self.param(
                'agent_tokens', _pinit(emb, (None, 'embed')), (c.num_agent_tokens, d), jnp.float32
            )
        self.transformer = Transformer(c.transformer, c.layout(), name='transformer')
        self.head = nn.Dense(
            c.token_dim,
            kernel_init=_pinit(nn.initializers.lecun_normal(), ('embed', 'io')),
            name='head',
        )

    def _tokens(self, z_BTNC, tau_BT, d_BT, actions, has_BT, agent_in_BTAD):
        c = self.config
        b, t, n, ch = z_BTNC.shape
        if (n, ch) != (c.num_latents, c.latent_dim):
            raise ValueError(
                f'Dynamics expects latents [B, T, {c.num_latents}, {c.latent_dim}], '
                f'got {z_BTNC.shape}'
            )
        if tau_BT.shape != (b, t) or d_BT.shape != (b, t) or has_BT.shape != (b, t):
            raise ValueError(
                f'tau {tau_BT.shape}, d {d_BT.shape} and has_action '
                f'{has_BT.shape} must all be [B, T] = {(b, t)}'
            )
        z_BTNC = z_BTNC.astype(jnp.float32)
        if c.input_scale == 'signal':
            z_BTNC = z_BTNC * tau_BT.astype(jnp.float32)[:, :, None, None]
        z_BTZP = z_BTNC.reshape(b, t, c.num_tokens, c.token_dim)
        parts = [
            self.action_embed(actions, has_BT),
            jnp.concatenate(
                [
                    jnp.take(self.tau_table, shortcut.tau_index(tau_BT, c.k_max), axis=0),
                    jnp.take(self.d_table, shortcut.d_index(d_BT, c.k_max), axis=0),
                ],
                axis=-1,
            )[:, :, None, :],
            self.latent_in(z_BTZP),
        ]
        if c.num_registers:
            parts.append(jnp.broadcast_to(self.registers, (b, t, *self.registers.shape)))
        if c.num_agent_tokens:
            agents = jnp.broadcast_to(self.agent_tokens, (b, t, *self.agent_tokens.shape))
            if agent_in_BTAD is not None:
                agents = agents + agent_in_BTAD.astype(jnp.float32)
            parts.append(agents)
        elif agent_in_BTAD is not None:
            raise ValueError('agent_in was given but config.num_agent_tokens is 0')
        return constrain(jnp.concatenate(parts, axis=2), ACT_BTSD)

    def _readout(self, y_BTSD):
        c = self.config
        layout = c.layout()
        b, t = y_BTSD.shape[:2]
        out_BTZP = self.head(y_BTSD[:, :, layout.slice('latents')])
        x_BTNC = out_BTZP.reshape(b, t, c.num_latents, c.latent_dim)
        agents = y_BTSD[:, :, layout.slice('agents')] if c.num_agent_tokens else None
        return x_BTNC, agents

    def __call__(
        self,
        z_BTNC: jax.Array,
        tau_BT: jax.Array,
        d_BT: jax.Array,
        actions: Mapping[str, jax.Array],
        has_action_BT: jax.Array,
        *,
        independent_frames_B: jax.Array | None = None,
        agent_in_BTAD: jax.Array | None = None,
    ):
        """Full sequence (training). Actions are block-aligned (`align_actions`).

        Returns (out_BTNC, agent_out_BTAD or None).
        """
        x = self._tokens(z_BTNC, tau_BT, d_BT, actions, has_action_BT, agent_in_BTAD)
        return self._readout(self.transformer(x, independent_frames_B))

    def step(
        self,
        z_BTNC: jax.Array,
        tau_BT: jax.Array,
        d_BT: jax.Array,
        actions: Mapping[str, jax.Array],
        has_action_BT: jax.Array,
        cache: KVCache,
        commit: bool = False,
        agent_in_BTAD: jax.Array | None = None,
    ):
        """T new frames after the cached context (PAPER 7). Returns ((out, agent_out), cache)."""
        x = self._tokens(z_BTNC, tau_BT, d_BT, actions, has_action_BT, agent_in_BTAD)
        y, cache = self.transformer.step(x, cache, commit=commit)
        return self._readout(y), cache


def dummy_actions(components: Sequence[Component], b: int, t: int) -> dict[str, jax.Array]:
    """All-zero actions of the right shapes (for init and unlabeled batches)."""
    out = {}
    for name, kind, size in components:
        if kind == 'categorical':
            out[name] = jnp.zeros((b, t), jnp.int32)
        else:
            out[name] = jnp.zeros((b, t, size), jnp.float32)
    return out


def init_params(model: Dynamics, rng: jax.Array) -> Any:
    """Parameters of `model` (boxed with logical names) from a [1, 1] dummy input."""
    c = model.config
    z = jnp.zeros((1, 1, c.num_latents, c.latent_dim), jnp.float32)
    ones = jnp.ones((1, 1), jnp.float32)
    agent = (
        jnp.zeros((1, 1, c.num_agent_tokens, c.transformer.width)) if c.num_agent_tokens else None
    )
    return model.init(
        rng,
        z,
        ones,
        ones,
        dummy_actions(c.actions, 1, 1),
        jnp.ones((1, 1), bool),
        agent_in_BTAD=agent,
    )['params']
