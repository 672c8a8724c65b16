"""Token layouts of a frame block and the attention masks they imply (PAPER 3.1, 4.1, 5.1, 9.1).

A layout is data: the ordered modalities inside one frame block (name, count) and, for each query
modality, the key modalities it may read. Space layers use the [S, S] mask it builds; the dense
ablation applies the same rule across frames; axial time layers need no rule, since slot i only
reads slot i of other frames, which holds the same modality.

Every modality must read itself: a query always sees its own slot (in time layers and in the
causal diagonal), and a modality blind to itself would have no keys in its own frame.

Dimension keys: S tokens per frame, T query frames, M key frames.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Ordered modalities of one frame block and who may read whom.

    Attributes:
      modalities: ((name, count), ...) in token order within the frame block.
      reads: ((query_name, (key_name, ...)), ...); a modality without an entry reads only itself.
    """

    modalities: tuple[tuple[str, int], ...]
    reads: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self):
        names = [n for n, _ in self.modalities]
        if not names:
            raise ValueError('TokenLayout needs at least one modality')
        if len(set(names)) != len(names):
            raise ValueError(f'TokenLayout: duplicate modality names in {names}')
        for name, count in self.modalities:
            if not isinstance(count, int | np.integer) or count < 1:
                raise ValueError(f'TokenLayout: modality {name!r} needs a count >= 1, got {count}')
        seen = set()
        for query, keys in self.reads:
            if query in seen:
                raise ValueError(f'TokenLayout: reads lists {query!r} twice')
            seen.add(query)
            unknown = {query, *keys} - set(names)
            if unknown:
                raise ValueError(
                    f'TokenLayout: reads mentions unknown modalities {sorted(unknown)}'
                    f'; known: {names}'
                )
            if query not in keys:
                raise ValueError(f'TokenLayout: modality {query!r} must read itself')

    @classmethod
    def build(
        cls, modalities: Sequence[tuple[str, int]], reads: Mapping[str, Sequence[str]]
    ) -> TokenLayout:
        """Layout from plain lists/dicts (modalities of count 0 are dropped with their rules)."""
        kept = tuple((n, int(c)) for n, c in modalities if c > 0)
        present = {n for n, _ in kept}
        rules = tuple(
            (q, tuple(k for k in keys if k in present)) for q, keys in reads.items() if q in present
        )
        return cls(kept, rules)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.modalities)

    @property
    def num_tokens(self) -> int:
        return sum(c for _, c in self.modalities)

    def count(self, name: str) -> int:
        return dict(self.modalities)[name]

    def slice(self, name: str) -> slice:
        """Token positions of one modality inside the frame block."""
        start = 0
        for n, c in self.modalities:
            if n == name:
                return slice(start, start + c)
            start += c
        raise KeyError(f'modality {name!r} not in layout {self.names}')

    def modality_ids(self) -> np.ndarray:
        """[S] int: index of each token's modality."""
        return np.repeat(np.arange(len(self.modalities)), [c for _, c in self.modalities])

    def read_matrix(self) -> np.ndarray:
        """[M, M] bool over modalities: entry (q, k) is True when q may read k."""
        index = {n: i for i, n in enumerate(self.names)}
        allowed = np.eye(len(self.names), dtype=bool)
        for query, keys in self.reads:
            for key in keys:
                allowed[index[query], index[key]] = True
        return allowed

    def space_mask(self) -> np.ndarray:
        """[S, S] bool: query token s may read key token r of the same (or, dense, any) frame."""
        ids = self.modality_ids()
        return self.read_matrix()[ids[:, None], ids[None, :]]

    def positions(self) -> np.ndarray:
        """[S] RoPE positions of the tokens in space layers: the token index within the frame.

        One axis for all modalities: it gives every token, including learned latents and
        registers, a distinct position, so no extra position embeddings are needed (a grid-aware
        2D variant would only change this method).
        """
        return np.arange(self.num_tokens)


def frame_mask(
    q_pos_T: jnp.ndarray,
    k_pos_M: jnp.ndarray,
    window: int | None,
    k_valid_M: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """[T, M] bool causal sliding-window rule over absolute frame indices (PAPER 3.1).

    Query frame t reads key frame u iff u <= t and t - u < window (C frames, t included).
    """
    delta = q_pos_T[:, None] - k_pos_M[None, :]
    allowed = delta >= 0
    if window is not None:
        allowed &= delta < window
    if k_valid_M is not None:
        allowed &= k_valid_M[None, :]
    return allowed


def independent_frame_mask(
    mask_TM: jnp.ndarray,
    q_pos_T: jnp.ndarray,
    k_pos_M: jnp.ndarray,
    independent_B: jnp.ndarray | None,
) -> jnp.ndarray:
    """[B, T, M] (or [T, M]) mask where flagged rows may only read their own frame (PAPER 6.5)."""
    if independent_B is None:
        return mask_TM
    self_TM = (q_pos_T[:, None] == k_pos_M[None, :]) & mask_TM
    return jnp.where(independent_B[:, None, None], self_TM[None], mask_TM[None])


def dense_mask(time_mask: jnp.ndarray, space_SS: np.ndarray) -> jnp.ndarray:
    """[..., T*S, M*S] block-causal space-time mask: the frame rule AND the modality rule.

    time_mask is [..., T, M]; the modality rule applies across frames too, so a modality that
    may not read another one (e.g. anything reading agent tokens) cannot read it in past frames.
    """
    *lead, t, m = time_mask.shape
    s = space_SS.shape[0]
    full = time_mask[..., :, None, :, None] & jnp.asarray(space_SS)[:, None, :]
    return full.reshape(*lead, t * s, m * s)


def encoder_layout(num_patches: int, num_latents: int) -> TokenLayout:
    """Tokenizer encoder (PAPER 4.1): latents read everything, patches read only patches."""
    return TokenLayout.build(
        [('patches', num_patches), ('latents', num_latents)],
        {'patches': ['patches'], 'latents': ['patches', 'latents']},
    )


def decoder_layout(num_readouts: int, num_latents: int) -> TokenLayout:
    """Tokenizer decoder (PAPER 4.1): read-outs read read-outs and latents; latents read latents."""
    return TokenLayout.build(
        [('latents', num_latents), ('readouts', num_readouts)],
        {'latents': ['latents'], 'readouts': ['readouts', 'latents']},
    )


def dynamics_layout(
    num_latents: int,
    num_actions: int = 1,
    num_shortcut: int = 1,
    num_registers: int = 0,
    num_agents: int = 0,
) -> TokenLayout:
    """Dynamics frame block (PAPER 5.1, 9.1): actions, shortcut, latents, registers, agents.

    Actions, shortcut token, latents and registers read each other freely: all are inputs of
    the same frame, and the prediction is read only at the latent slots. Agent tokens read every
    modality and nothing else reads them (PAPER 9.1: no causal confusion from task intent).
    """
    world = ['actions', 'shortcut', 'latents', 'registers']
    return TokenLayout.build(
        [
            ('actions', num_actions),
            ('shortcut', num_shortcut),
            ('latents', num_latents),
            ('registers', num_registers),
            ('agents', num_agents),
        ],
        {**{w: world for w in world}, 'agents': [*world, 'agents']},
    )
