"""Latent cache: a dataset split encoded once by a finished tokenizer, reused by later phases.

The dynamics, agent and imagination phases read the frozen tokenizer's latents of every frame
(PAPER 5-10). Encoding them inside each train step costs up to half the step; with
`config.data.latents='cache'` they are encoded once per (tokenizer checkpoint, dataset split)
and the pipeline serves windows that carry 'latents' instead of 'image'.

Layout, next to the tokenizer run that made them:
  <tokenizer_workdir>/latents/<data.name>/<split>/latents.npy  float32 [records, N, C] in the
                                                               split's record order
  <tokenizer_workdir>/latents/<data.name>/<split>/key.json     what they were encoded from
A split is written into a hidden `.<split>.incomplete-*` sibling and renamed when complete, so
an interrupted encode leaves nothing that looks like a cache (the next encode removes such a
folder once the process that made it is gone, as dataset builds do).

Key (key.json): the tokenizer checkpoint step, a SHA-256 of the weights the phase loads (EMA
where the run keeps them) and of the tokenizer config, the frames of context, a SHA-256 of the
dataset's index.json, the split, its record count and the latent shape. Every open compares the
stored key with the one of the tokenizer the phase loaded: a mismatch is `StaleLatentsError`
(one line naming the fields); `ensure` re-encodes then (single-process runs) and prints why.

Which latents (the time-window rule): latents[t] is what closed-loop play and the play server
observe for frame t: the encoder runs over the episode from its first frame, frame blocks in
order with its KV cache (`Tokenizer.encode_step`), so frame t reads at most `time_window - 1`
earlier frames in each time layer, never frames of another episode. On-the-fly encoding in a
train step encodes each window alone; it gives the same latents wherever a frame's context lies
inside the window (every frame of a window that starts an episode; from position
(time layers) x (time_window - 1) on in any window) and truncated context before that. The cache
gives every frame its full in-episode context: what the models meet at inference.
A tokenizer without a time window attends to `context` frames (its training window length), as
the closed loop's cache does.

Dimension keys: E episodes in a batch, L frames of a chunk, N latents, C channels.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dreamer4_jax import errors, pretrained
from dreamer4_jax.data.build import OWNER_FILE, DatasetMeta, load_meta, remove_stale_builds
from dreamer4_jax.data.config import DataError, MissingDataError
from dreamer4_jax.tokenizer import Tokenizer, TokenizerConfig, new_encoder_cache

FORMAT = 1
RULE = 'episode_causal'  # see the module doc
LATENTS_FILE, KEY_FILE = 'latents.npy', 'key.json'


class StaleLatentsError(DataError):
    """A cache encoded by another tokenizer checkpoint (or from another dataset)."""


@dataclasses.dataclass(frozen=True)
class Encoder:
    """The tokenizer checkpoint that encodes: its run folder, step, config and weights.

    context: frames the encoder attends to when its config has no time window (else unused).
    """

    workdir: str
    step: int
    config: TokenizerConfig
    params: Any
    context: int

    @functools.cached_property
    def params_sha256(self) -> str:
        h = hashlib.sha256()
        flat = jax.tree_util.tree_flatten_with_path(jax.device_get(self.params))[0]
        for path, leaf in sorted(flat, key=lambda kv: jax.tree_util.keystr(kv[0])):
            x = np.ascontiguousarray(leaf)
            h.update(f'{jax.tree_util.keystr(path)}:{x.dtype}:{x.shape};'.encode())
            h.update(x.tobytes())
        return h.hexdigest()

    @property
    def config_sha256(self) -> str:
        text = json.dumps(dataclasses.asdict(self.config), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def context_frames(self) -> int:
        window = self.config.encoder.time_window
        return int(window) if window is not None else int(self.context)


def cache_dir(encoder: Encoder, data_config: ml_collections.ConfigDict, split: str) -> Path:
    return Path(encoder.workdir) / 'latents' / str(data_config.name) / split


def expected_key(encoder: Encoder, meta: DatasetMeta, split: str) -> dict:
    """The key a cache of `split` encoded by `encoder` must carry (module doc)."""
    c = encoder.config
    return {
        'format': FORMAT,
        'rule': RULE,
        'tokenizer_step': int(encoder.step),
        'tokenizer_params_sha256': encoder.params_sha256,
        'tokenizer_config_sha256': encoder.config_sha256,
        'context_frames': encoder.context_frames,
        'dataset_index_sha256': hashlib.sha256((meta.path / 'index.json').read_bytes()).hexdigest(),
        'split': split,
        'records': int(meta.splits[split].lengths.sum()),
        'latent_shape': [int(c.num_latents), int(c.latent_dim)],
        'dtype': 'float32',
    }


@dataclasses.dataclass(frozen=True)
class LatentSource:
    """Where the pipeline reads a split's latents, and the key they must carry."""

    path: Path
    key: dict

    def open(self) -> np.ndarray:
        """The latents [records, N, C] (memory-mapped); raises unless the stored key matches."""
        key_file, data_file = self.path / KEY_FILE, self.path / LATENTS_FILE
        if not key_file.is_file() or not data_file.is_file():
            raise MissingDataError(f'no latent cache at {self.path} yet')
        try:
            stored = json.loads(key_file.read_text())
        except ValueError as e:
            raise StaleLatentsError(f'{key_file} cannot be read ({e})') from e
        diff = sorted(k for k in set(stored) | set(self.key) if stored.get(k) != self.key.get(k))
        if diff:
            raise StaleLatentsError(
                f'latent cache {self.path} was encoded from another tokenizer checkpoint or '
                f'dataset (differs in {", ".join(diff)}; stored step {stored.get("tokenizer_step")}'
                f', loaded step {self.key["tokenizer_step"]})'
            )
        z = np.load(data_file, mmap_mode='r')
        want = (self.key['records'], *self.key['latent_shape'])
        if z.shape != want or z.dtype != np.float32:
            raise StaleLatentsError(
                f'{data_file} holds {z.dtype} {z.shape}, expected float32 {want}'
            )
        return z


def _encode_chunk(tok: Tokenizer, params, frames_ELHWC, cache):
    x = jnp.asarray(frames_ELHWC, jnp.float32) / 255.0
    return tok.apply({'params': params}, x, cache, method=Tokenizer.encode_step)


def encode_split(
    encoder: Encoder,
    meta: DatasetMeta,
    split: str,
    out: np.ndarray,
    *,
    episodes_per_batch: int | None = None,
    chunk: int = 32,
    progress=None,
) -> None:
    """Writes the latents of every record of `split` into `out` [records, N, C] (module doc).

    Episodes run in batches of `episodes_per_batch`, `chunk` frames per call through the
    encoder's KV cache (one compiled shape; frames past an episode's end are padding and are
    never read by earlier frames: the encoder is causal). `progress(done_records)` is called
    after every batch. Default batch: 1 episode on CPU (measured fastest on 2 cores: larger
    calls spill the caches), 16 on accelerators.
    """
    if episodes_per_batch is None:
        episodes_per_batch = 1 if jax.default_backend() == 'cpu' else 16
    import tensorflow_datasets as tfds  # deferred: seconds to import

    source = tfds.builder_from_directory(str(meta.tfds_dir)).as_data_source(split=split)
    s = meta.splits[split]
    offsets, lengths = s.offsets, s.lengths
    tok = Tokenizer(encoder.config)
    step = jax.jit(functools.partial(_encode_chunk, tok))
    params = jax.device_put(encoder.params)
    e = int(episodes_per_batch)
    order = np.argsort(-lengths, kind='stable')  # similar lengths together: less padding
    done = 0
    for first in range(0, len(order), e):
        group = order[first : first + e]
        padded = -(-int(lengths[group].max()) // chunk) * chunk
        frames = np.zeros((e, padded, *meta.image_shape), np.uint8)
        for row, ep in enumerate(group):
            start, n = int(offsets[ep]), int(lengths[ep])
            records = source.__getitems__(list(range(start, start + n)))
            frames[row, :n] = np.stack([r['image'] for r in records])
        cache = new_encoder_cache(encoder.config, e, encoder.context_frames)
        for t in range(0, padded, chunk):
            z_ELNC, cache = step(params, frames[:, t : t + chunk], cache)
            z_ELNC = np.asarray(z_ELNC, np.float32)
            for row, ep in enumerate(group):
                n = min(chunk, int(lengths[ep]) - t)
                if n > 0:
                    start = int(offsets[ep]) + t
                    out[start : start + n] = z_ELNC[row, :n]
        done += int(lengths[group].sum())
        if progress is not None:
            progress(done)


def build(
    encoder: Encoder,
    data_config: ml_collections.ConfigDict,
    split: str,
    *,
    progress: bool = True,
    **encode_kw,
) -> LatentSource:
    """Encodes `split` and writes it atomically (module doc); replaces a stale cache."""
    meta = load_meta(data_config)
    final = cache_dir(encoder, data_config, split)
    key = expected_key(encoder, meta, split)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(final)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{final.name}.incomplete-', dir=final.parent))
    total, t0 = key['records'], time.perf_counter()
    last = [t0]

    def report(done: int) -> None:
        now = time.perf_counter()
        if progress and (done == total or now - last[0] > 5.0):
            last[0] = now
            print(
                f'[latents] {meta.path.name}/{split}: {done:,}/{total:,} frames encoded '
                f'({100 * done / max(total, 1):.0f} %, {now - t0:.1f} s)',
                flush=True,
            )

    try:
        (tmp / OWNER_FILE).write_text(
            json.dumps({'host': socket.gethostname(), 'pid': os.getpid()})
        )
        shape = (total, *key['latent_shape'])
        out = np.lib.format.open_memmap(
            tmp / LATENTS_FILE, mode='w+', dtype=np.float32, shape=shape
        )
        encode_split(encoder, meta, split, out, progress=report, **encode_kw)
        out.flush()
        del out
        (tmp / KEY_FILE).write_text(json.dumps(key, indent=1))
        (tmp / OWNER_FILE).unlink()
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        if final.exists():  # stale: move it aside first, then swap the new one in
            old = final.parent / f'.{final.name}.stale-{os.getpid()}'
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return LatentSource(final, key)


def ensure(
    encoder: Encoder,
    data_config: ml_collections.ConfigDict,
    split: str,
    *,
    may_build: bool = True,
    progress: bool = True,
) -> LatentSource:
    """The cache of `split` for `encoder`: reused when its key matches, else (re-)encoded.

    may_build=False (multi-process runs: processes must not race on one folder) turns a missing
    or stale cache into the error that says how to build it.
    """
    meta = load_meta(data_config)
    source = LatentSource(
        cache_dir(encoder, data_config, split), expected_key(encoder, meta, split)
    )
    try:
        source.open()
        return source
    except (MissingDataError, StaleLatentsError) as e:
        if not may_build:
            raise type(e)(
                f'{e}: encode it first with `python -m dreamer4_jax.data.latent_cache '
                f'--tokenizer_workdir={encoder.workdir} --splits={split}`'
            ) from e
        if progress:
            print(f'[latents] encoding the {split} split once: {e}', flush=True)
    return build(encoder, data_config, split, progress=progress)


def encoder_of(run, params: Any) -> Encoder:
    """The Encoder of a loaded tokenizer run (`pretrained.Pretrained`) and the weights it gave."""
    return Encoder(
        workdir=str(run.workdir),
        step=int(run.step),
        config=run.tokenizer_config(),
        params=params,
        context=int(run.config.data.window_length) if 'data' in run.config else 16,
    )


def main(argv: list[str] | None = None) -> int:
    """Encodes splits now instead of at the start of the first phase that needs them.

      python -m dreamer4_jax.data.latent_cache --tokenizer_workdir=runs/demo/tokenizer \\
          [--splits=train,eval] [--data_dir=data_cache --data_name=craftax_tiny]

    The dataset is the one the tokenizer run trained on (its saved config.data) unless
    --data_dir / --data_name name another. A stale cache is re-encoded; a valid one is kept.
    """
    return errors.cli(lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    p = errors.ArgumentParser(prog='python -m dreamer4_jax.data.latent_cache')
    p.add_argument('--tokenizer_workdir', required=True, help='a finished tokenizer run')
    p.add_argument('--splits', default='train', help='comma-separated splits (default train)')
    p.add_argument('--data_dir', default='', help="config.data.dir (default: the run's)")
    p.add_argument('--data_name', default='', help="config.data.name (default: the run's)")
    args = p.parse_args(argv)
    run = pretrained.load(args.tokenizer_workdir, expect='tokenizer')
    data = ml_collections.ConfigDict(run.config.data.to_dict())
    data.dir = args.data_dir or data.dir
    data.name = args.data_name or data.name
    encoder = encoder_of(run, run.params())
    for split in [s.strip() for s in args.splits.split(',') if s.strip()]:
        print(f'[latents] ready: {ensure(encoder, data, split).path}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
