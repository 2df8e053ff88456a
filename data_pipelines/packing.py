"""Packing mode: precomputed latents of clips of any shape, packed into fixed-length token rows.

One compiled program covers every clip size: a latents record [t, h, w, C]
(data_pipelines/precompute.py, e.g. encoded at each clip's bucket shape) becomes
n = (t / pt)(h / ph)(w / pw) tokens [n, pt*ph*pw*C] in the DiT's patch layout
(vidgen.models.dit.patchify) with their (t, h, w) grid positions, plus its caption's tokens as
one row. grain's first-fit packer (grain.experimental.FirstFitPackIterDataset) fills rows of
`seq_len` tokens holding at most `max_clips` clips; a host batch (leading axis b) is

    tokens            float32 [b, L, F]   latent patches, zeros where padded
    positions         int32 [b, L, 3]     (t, h, w) of each token within its own clip
    segment_ids       int32 [b, L]        j + 1 for the tokens of the row's j-th clip, 0 = padding
    text_ids          int32 [b, S, Lt]    caption tokens of the j-th clip in slot j (0: empty)
    text_mask         bool [b, S, Lt]
    text_segment_ids  int32 [b, S]        j + 1 where slot j holds a clip, else 0

A token attends only to tokens of its own segment and reads only its own clip's caption (the
DiT's segment_ids / context_segment_ids), and the dit task draws one flow time per segment and
averages the loss over real tokens only. Clips longer than seq_len are skipped (logged).

Order and state: this host's records are sharded, shuffled per epoch and repeated as in
pipeline.host_records, then packed; the iterator state is grain's (the packer's included), so a
restored run continues the exact batch sequence on the same number of hosts. Each host packs
its own shard, so a different host count gives another (equally valid) sequence.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import grain
import numpy as np

from data_pipelines import pipeline, shards

log = logging.getLogger(__name__)


def latent_tokens(latents: np.ndarray, patch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """latents [t, h, w, C] -> (tokens [n, pt*ph*pw*C], int32 positions [n, 3]): the DiT's
    patchify of one clip (sizes zero-padded up to multiples of the patch) and each token's
    (t, h, w) grid coordinates, in the same row-major order."""
    pt, ph, pw = (int(p) for p in patch)
    pads = [(0, (-n) % p) for n, p in zip(latents.shape[:3], (pt, ph, pw))] + [(0, 0)]
    x = np.pad(np.asarray(latents, np.float32), pads)
    gt, gh, gw = x.shape[0] // pt, x.shape[1] // ph, x.shape[2] // pw
    x = x.reshape(gt, pt, gh, ph, gw, pw, -1).transpose(0, 2, 4, 1, 3, 5, 6)
    grid = np.stack(np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij"), -1)
    return x.reshape(gt * gh * gw, -1), grid.reshape(-1, 3).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class PackableLatents:
    """A tagged latents record -> the per-clip element the packer takes ({"tokens",
    "positions", "text_ids" [1, Lt], "text_mask" [1, Lt]}), or None if it exceeds seq_len."""

    patch: tuple[int, int, int]
    seq_len: int
    text_fn: Callable[[dict], dict[str, np.ndarray]]

    def __call__(self, tagged: tuple[int, bytes]) -> dict[str, np.ndarray] | None:
        meta, payload = shards.decode_record(tagged[1])
        tokens, positions = latent_tokens(pipeline.read_latent_payload(payload)["latents"],
                                          self.patch)
        if len(tokens) > self.seq_len:
            log.warning("skipping clip %r: %d tokens > seq_len %d", meta.get("id"),
                        len(tokens), self.seq_len)
            return None
        text = self.text_fn(meta)
        return {"tokens": tokens, "positions": positions,
                "text_ids": np.asarray(text["text_ids"])[None],
                "text_mask": np.asarray(text["text_mask"], bool)[None]}


def _rename(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """grain's packed-row keys -> the batch fields of the module docstring."""
    return {"tokens": row["tokens"], "positions": row["positions"],
            "segment_ids": row["tokens_segment_ids"], "text_ids": row["text_ids"],
            "text_mask": row["text_mask"], "text_segment_ids": row["text_ids_segment_ids"]}


def make_packed_latent_dataset(shard_paths: Sequence[str], *, seq_len: int, max_clips: int,
                               patch: Sequence[int], batch_size: int, seed: int,
                               text_fn: Callable[[dict], dict[str, np.ndarray]],
                               num_bins: int | None = None, num_epochs: int | None = None,
                               shard: grain.sharding.ShardOptions | None = None
                               ) -> grain.IterDataset:
    """Host batches of packed rows (module docstring) from precomputed-latents shards.

    `batch_size` is global (rows per step); `num_bins` rows are filled at once (default 4 per
    host row: more bins, less padding); `text_fn` gives each clip's text_ids and text_mask.
    """
    if seq_len < 1 or max_clips < 1:
        raise ValueError(f"seq_len={seq_len} and max_clips={max_clips} must be >= 1")
    local_batch = pipeline.host_batch_size(batch_size)
    records = pipeline.tagged_records(shard_paths)
    clips = pipeline.host_records(
        records, shard=shard or grain.sharding.ShardByJaxProcess(drop_remainder=True),
        seed=seed, shuffle=True, num_epochs=num_epochs)
    ds = clips.map(PackableLatents(tuple(int(p) for p in patch), seq_len, text_fn))
    ds = grain.experimental.FirstFitPackIterDataset(
        ds.to_iter_dataset(), num_packing_bins=num_bins or 4 * local_batch, seed=seed,
        length_struct={"tokens": seq_len, "positions": seq_len, "text_ids": max_clips,
                       "text_mask": max_clips},
        meta_features=("positions", "text_mask"), max_sequences_per_bin=max_clips)
    return ds.map(_rename).batch(local_batch, drop_remainder=True)


def padding_share(batch: dict[str, np.ndarray]) -> float:
    """The share of a packed batch's token slots that are padding."""
    return float(np.mean(np.asarray(batch["segment_ids"]) == 0))
