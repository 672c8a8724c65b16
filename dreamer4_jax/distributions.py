"""Output distributions: symlog/symexp, the symexp two-hot, factorized action distributions.

PAPER 9.2: reward and value heads predict a symexp two-hot distribution (DreamerV3 style); the
policy head is a factorized distribution matching the action space (Minecraft: 23 Bernoulli keys
plus one 121-way categorical mouse; log-prob and KL are sums over components, PAPER 10.3).

Dimension keys: B.. any leading batch dims (e.g. B, T), N two-hot bins, A per-component size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
KINDS = ('categorical', 'binary', 'continuous')


def symlog(x: Array) -> Array:
    """sign(x) * log(1 + |x|): compresses large magnitudes, identity-like near 0."""
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x: Array) -> Array:
    """Inverse of `symlog`: sign(x) * (exp(|x|) - 1)."""
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


@dataclasses.dataclass(frozen=True)
class TwoHot:
    """Symexp two-hot distribution over `num_bins` bins uniform in symlog space on [low, high].

    PAPER 9.2 / 14: 255 bins on [-20, 20] (DreamerV3 defaults, not stated by the paper). A scalar x
    is encoded as weights on the two bins around symlog(x) (linear interpolation, so the expected
    bin equals symlog(x) exactly inside the range; outside it is clipped to the end bin). Frozen
    and hashable, so it can be a static argument or a config field.
    """

    num_bins: int = 255
    low: float = -20.0
    high: float = 20.0

    def __post_init__(self) -> None:
        if self.num_bins < 2:
            raise ValueError(f'TwoHot needs num_bins >= 2, got {self.num_bins}.')
        if not self.low < self.high:
            raise ValueError(f'TwoHot needs low < high, got low={self.low}, high={self.high}.')

    @property
    def bins(self) -> Array:
        """Bin centers in symlog space, [N]."""
        return jnp.linspace(self.low, self.high, self.num_bins, dtype=jnp.float32)

    def _check_logits(self, logits: Array) -> None:
        if logits.shape[-1] != self.num_bins:
            raise ValueError(
                f'TwoHot logits must end in {self.num_bins} bins, got shape {logits.shape}.'
            )

    def encode(self, x: Array) -> Array:
        """Scalars [B..] -> two-hot target probabilities [B.., N] (no gradient to x needed)."""
        y = jnp.clip(symlog(jnp.asarray(x, jnp.float32)), self.low, self.high)
        pos = (y - self.low) / (self.high - self.low) * (self.num_bins - 1)
        below = jnp.clip(jnp.floor(pos), 0, self.num_bins - 2)
        frac = pos - below
        below = below.astype(jnp.int32)
        probs = jax.nn.one_hot(below, self.num_bins) * (1.0 - frac)[..., None]
        return probs + jax.nn.one_hot(below + 1, self.num_bins) * frac[..., None]

    def decode(self, probs: Array) -> Array:
        """Probabilities [B.., N] -> symexp of the expected bin, [B..]."""
        return symexp(jnp.sum(probs * self.bins, axis=-1))

    def mean(self, logits: Array) -> Array:
        """Logits [B.., N] -> predicted scalar [B..]: symexp(E[bin]) as in DreamerV3."""
        self._check_logits(logits)
        return self.decode(jax.nn.softmax(logits.astype(jnp.float32), axis=-1))

    def log_prob(self, logits: Array, x: Array) -> Array:
        """Cross-entropy log-likelihood of targets x [B..] under logits [B.., N] -> [B..]."""
        self._check_logits(logits)
        target = jax.lax.stop_gradient(self.encode(x))
        return jnp.sum(target * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1)


def _normalize_components(space: Any) -> tuple[tuple[str, str, int], ...]:
    """Accept an ActionSpace (anything with `.components`) or a sequence of (name, kind, size)."""
    raw = space.components if hasattr(space, 'components') else space
    out = []
    for comp in raw:
        if isinstance(comp, Sequence) and not isinstance(comp, str) and len(comp) == 3:
            name, kind, size = comp
        elif all(hasattr(comp, a) for a in ('name', 'kind', 'size')):
            name, kind, size = comp.name, comp.kind, comp.size
        else:
            raise ValueError(f'Action component {comp!r} is not a (name, kind, size) triple.')
        if kind not in KINDS:
            raise ValueError(f'Action component {name!r} has kind {kind!r}; use one of {KINDS}.')
        if int(size) < 1 or (kind == 'categorical' and int(size) < 2):
            raise ValueError(f'Action component {name!r} ({kind}) has invalid size {size}.')
        out.append((str(name), str(kind), int(size)))
    names = [c[0] for c in out]
    if not out or len(set(names)) != len(names):
        raise ValueError(f'Action space needs >= 1 component with unique names, got {names}.')
    return tuple(out)


def _masked_sum_plogr(probs: Array, log_ratio: Array) -> Array:
    # sum_i p_i * log_ratio_i with 0 * (-inf) := 0, so masked (-inf logit) classes are allowed.
    return jnp.sum(jnp.where(probs > 0, probs * log_ratio, 0.0), axis=-1)


@dataclasses.dataclass(frozen=True)
class ActionDist:
    """Factorized distribution over an action space; log-probs, entropies and KLs sum components.

    `components`: an ActionSpace (its `.components` is a sequence of (name, kind, size)) or that
    sequence itself. Parameters and actions are dicts keyed by component name:
      - 'categorical' (size = classes): params logits [B.., size]; action int [B..].
      - 'binary' (size = number of Bernoulli bits): params logits [B.., size]; action {0,1}
        [B.., size] (int or float).
      - 'continuous' (size = dims): params [B.., 2*size] = concat(mean, std_raw); a diagonal
        Gaussian with std = min_std + (max_std - min_std) * sigmoid(std_raw), i.e. a learned,
        state-dependent std kept in a bounded range (DreamerV3 style) so KL(pi || prior) and
        entropy stay finite. Unbounded (no tanh squashing); action float [B.., size].
    Samples come back as int32 for categorical/binary and float32 for continuous.
    """

    components: Any
    min_std: float = 0.1
    max_std: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, 'components', _normalize_components(self.components))
        if not 0 < self.min_std <= self.max_std:
            raise ValueError(f'Need 0 < min_std <= max_std, got {self.min_std}, {self.max_std}.')

    def param_sizes(self) -> dict[str, int]:
        """Output units a policy head needs per component."""
        return {n: (2 * s if k == 'continuous' else s) for n, k, s in self.components}

    def _checked(self, params: Mapping[str, Array]) -> None:
        sizes = self.param_sizes()
        if set(params) != set(sizes):
            raise ValueError(f'Action params have keys {sorted(params)}, expected {sorted(sizes)}.')
        for name, size in sizes.items():
            if params[name].shape[-1] != size:
                raise ValueError(
                    f'Action params {name!r} have shape {params[name].shape}; last dim must be '
                    f'{size}.'
                )

    def _gaussian(self, p: Array) -> tuple[Array, Array]:
        mean, std_raw = jnp.split(p.astype(jnp.float32), 2, axis=-1)
        std = self.min_std + (self.max_std - self.min_std) * jax.nn.sigmoid(std_raw)
        return mean, std

    def component_log_probs(
        self, params: Mapping[str, Array], actions: Mapping[str, Array]
    ) -> dict[str, Array]:
        """Per-component log-likelihoods, each [B..]."""
        self._checked(params)
        out = {}
        for name, kind, _ in self.components:
            p, a = params[name].astype(jnp.float32), actions[name]
            if kind == 'categorical':
                # Out-of-range indices give NaN (not a silent 0) so the non-finite check fires.
                logp = jax.nn.log_softmax(p, axis=-1)
                idx = a.astype(jnp.int32)[..., None]
                picked = jnp.take_along_axis(logp, idx, axis=-1, mode='fill', fill_value=jnp.nan)
                out[name] = picked[..., 0]
            elif kind == 'binary':
                a = a.astype(jnp.float32)
                lp = a * jax.nn.log_sigmoid(p) + (1.0 - a) * jax.nn.log_sigmoid(-p)
                out[name] = jnp.sum(lp, axis=-1)
            else:
                mean, std = self._gaussian(p)
                z = (a.astype(jnp.float32) - mean) / std
                lp = -0.5 * z**2 - jnp.log(std) - 0.5 * math.log(2 * math.pi)
                out[name] = jnp.sum(lp, axis=-1)
        return out

    def log_prob(self, params: Mapping[str, Array], actions: Mapping[str, Array]) -> Array:
        """Joint log-likelihood of a factorized action, summed over components, [B..]."""
        return sum(self.component_log_probs(params, actions).values())

    def sample(self, rng: Array, params: Mapping[str, Array]) -> dict[str, Array]:
        """One action per batch element; component i uses key fold_in(rng, i)."""
        self._checked(params)
        out = {}
        for i, (name, kind, _) in enumerate(self.components):
            key, p = jax.random.fold_in(rng, i), params[name].astype(jnp.float32)
            if kind == 'categorical':
                out[name] = jax.random.categorical(key, p, axis=-1).astype(jnp.int32)
            elif kind == 'binary':
                out[name] = jax.random.bernoulli(key, jax.nn.sigmoid(p)).astype(jnp.int32)
            else:
                mean, std = self._gaussian(p)
                out[name] = mean + std * jax.random.normal(key, mean.shape, jnp.float32)
        return out

    def mode(self, params: Mapping[str, Array]) -> dict[str, Array]:
        """Most likely action (argmax, logit > 0, Gaussian mean)."""
        self._checked(params)
        out = {}
        for name, kind, _ in self.components:
            p = params[name].astype(jnp.float32)
            if kind == 'categorical':
                out[name] = jnp.argmax(p, axis=-1).astype(jnp.int32)
            elif kind == 'binary':
                out[name] = (p > 0).astype(jnp.int32)
            else:
                out[name] = self._gaussian(p)[0]
        return out

    def entropy(self, params: Mapping[str, Array]) -> Array:
        """Entropy in nats, summed over components, [B..]."""
        self._checked(params)
        total = 0.0
        for name, kind, _ in self.components:
            p = params[name].astype(jnp.float32)
            if kind == 'categorical':
                logp = jax.nn.log_softmax(p, axis=-1)
                total = total - _masked_sum_plogr(jnp.exp(logp), logp)
            elif kind == 'binary':
                # H = prob * softplus(-l) + (1 - prob) * softplus(l), stable for large |l|.
                prob = jax.nn.sigmoid(p)
                h = prob * jax.nn.softplus(-p) + (1.0 - prob) * jax.nn.softplus(p)
                total = total + jnp.sum(h, axis=-1)
            else:
                _, std = self._gaussian(p)
                total = total + jnp.sum(0.5 + 0.5 * math.log(2 * math.pi) + jnp.log(std), -1)
        return total

    def kl(self, p_params: Mapping[str, Array], q_params: Mapping[str, Array]) -> Array:
        """Closed-form KL(p || q) in nats, summed over components, [B..].

        PAPER 10.3 uses the reverse KL(pi_theta || pi_prior): pass the policy as p, the prior as q.
        """
        self._checked(p_params)
        self._checked(q_params)
        total = 0.0
        for name, kind, _ in self.components:
            p, q = p_params[name].astype(jnp.float32), q_params[name].astype(jnp.float32)
            if kind == 'categorical':
                logp, logq = jax.nn.log_softmax(p, -1), jax.nn.log_softmax(q, -1)
                total = total + _masked_sum_plogr(jnp.exp(logp), logp - logq)
            elif kind == 'binary':
                prob = jax.nn.sigmoid(p)
                kl = prob * (jax.nn.log_sigmoid(p) - jax.nn.log_sigmoid(q)) + (1.0 - prob) * (
                    jax.nn.log_sigmoid(-p) - jax.nn.log_sigmoid(-q)
                )
                total = total + jnp.sum(kl, axis=-1)
            else:
                (mp, sp), (mq, sq) = self._gaussian(p), self._gaussian(q)
                kl = jnp.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / (2.0 * sq**2) - 0.5
                total = total + jnp.sum(kl, axis=-1)
        return total
