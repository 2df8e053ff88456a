"""The bucket table (which static shapes a run trains on), clip assignment, and the step schedule.

A bucket is (resolution class, aspect ratio, frame count): one clip shape [F, h, w] and one
global batch size, so one compiled program. `config.data.buckets` holds:

    resolutions     {name: pixel budget}, e.g. {"256px": 256 * 256, "480p": 480 * 848}
    aspect_ratios   ("W:H", ...), e.g. ("9:21", "9:16", "3:4", "1:1", "4:3", "16:9", "21:9")
    num_frames      frame counts 1 + k * token_stride[0]; 1 = still images
    fps             target frame rate: a clip at f fps is read every round(f / fps)-th frame
                    (0: every frame; a clip slower than fps keeps its own rate)
    token_stride    (frames, pixels, pixels) per latent token: the VAE's stride times the DiT's
                    patch, e.g. (4, 16, 16) for Wan (temporal patch 1); bucket sides are
                    multiples of the spatial strides
    max_upscale     a clip may be scaled up at most by this factor to cover a bucket
    tokens_per_step the global token budget of a step: a bucket's global batch is the largest
                    multiple of batch_multiple within it (at least batch_multiple) ...
    batch_multiple  ... so every global batch divides over hosts x data-parallel devices
    batch_sizes     {bucket name: global batch}, set by hand (overrides the budget)
    weights         {bucket or resolution name: w}: a bucket's clips are used w times per epoch
                    (default 1: each clip exactly once); 0 disables a bucket

A bucket's sides: h = sqrt(budget / r), w = sqrt(budget * r) for r = W / H, each rounded to
the nearest multiple of its stride. Its name is "{resolution}_{W}x{H}_{F}f" (e.g. 480p_16x9_33f).

Assignment: a clip goes to the aspect ratio nearest its own (in log ratio), then to the largest
bucket of that ratio (tokens, then pixels, then frames) that it fills: F frames available at the
target rate, and the cover scale max(h / H, w / W) <= max_upscale. A bucket with fewer clip
slots per epoch than one global batch is dropped and its clips go to the next bucket they fill.

Schedule: bucket k holds n_k clips and fills m_k = round(w_k * n_k) slots per epoch; its slots
form an endless stream, lap after lap, each lap a fresh permutation of its clips (seeded by
(seed, k, epoch, lap)), and its g-th global batch takes slots [g B_k, (g + 1) B_k). Epoch e of
the schedule holds floor((e+1) m_k / B_k) - floor(e m_k / B_k) steps of bucket k, in an order
shuffled by (seed, e). Which bucket and clips step s uses is a pure function of (seed, s, the
plan): identical on every host, for any host or worker count. Host i of n reads the i-th
contiguous n-th of each global batch, so the global batch of a step (its clips, crops and
order) does not depend on the host count either.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import grain
import numpy as np

from vidgen.io import video as video_io


@dataclasses.dataclass(frozen=True)
class Bucket:
    """One static clip shape and its global batch size."""

    name: str
    resolution: str
    aspect: str
    num_frames: int
    height: int
    width: int
    tokens: int              # latent tokens of one clip
    batch_size: int          # clips per global step
    weight: float            # uses of each clip per epoch


@dataclasses.dataclass(frozen=True)
class ClipInfo:
    """What assignment needs to know about a clip."""

    num_frames: int
    fps: float
    height: int
    width: int


def clip_info(meta: dict, video: bytes | None = None) -> ClipInfo:
    """A clip's ClipInfo from its record metadata, as displayed (height and width swapped for a
    `rotation` of 90 or 270 degrees); fields the metadata lacks are probed from `video`."""
    fields = ("num_frames", "fps", "height", "width")
    values = {k: meta.get(k) for k in fields}
    if any(values[k] is None for k in fields):
        if video is None:
            raise ValueError(f"clip {meta.get('id')!r}: metadata lacks one of {fields}")
        probed = video_io.probe_video(video)
        values = {k: getattr(probed, k) if v is None else v for k, v in values.items()}
    height, width = int(values["height"]), int(values["width"])
    if int(meta.get("rotation") or 0) % 180 == 90:
        height, width = width, height
    return ClipInfo(int(values["num_frames"]), float(values["fps"] or 0.0), height, width)


def parse_aspect(text: str) -> float:
    """"W:H" -> W / H."""
    try:
        w, h = (float(x) for x in text.split(":"))
    except ValueError as e:
        raise ValueError(f"aspect ratio {text!r}: expected 'W:H', e.g. '16:9'") from e
    if w <= 0 or h <= 0:
        raise ValueError(f"aspect ratio {text!r}: both sides must be positive")
    return w / h


def bucket_sides(budget: int, ratio: float, strides: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of about `budget` pixels at w / h = ratio, each a multiple of its stride."""
    h, w = math.sqrt(budget / ratio), math.sqrt(budget * ratio)
    return (max(1, round(h / strides[0])) * strides[0], max(1, round(w / strides[1])) * strides[1])


def _batch_size(tokens: int, budget: int, multiple: int) -> int:
    return max(1, budget // (tokens * multiple)) * multiple


@dataclasses.dataclass(frozen=True)
class BucketTable:
    """The buckets of a run and the rule that assigns a clip to one of them."""

    buckets: tuple[Bucket, ...]
    aspects: tuple[str, ...]
    fps: float
    max_upscale: float

    @classmethod
    def from_config(cls, c: Mapping) -> BucketTable:
        """The table config.data.buckets describes (see the module docstring)."""
        st, sh, sw = (int(s) for s in c["token_stride"])
        multiple, budget = int(c["batch_multiple"]), int(c["tokens_per_step"])
        manual, weights = dict(c.get("batch_sizes") or {}), dict(c.get("weights") or {})
        for f in c["num_frames"]:
            if f < 1 or (f - 1) % st:
                raise ValueError(f"buckets.num_frames: {f} is not 1 + k * {st}")
        buckets = []
        for res, pixels in dict(c["resolutions"]).items():
            for aspect in c["aspect_ratios"]:
                h, w = bucket_sides(int(pixels), parse_aspect(aspect), (sh, sw))
                for f in c["num_frames"]:
                    name = f"{res}_{aspect.replace(':', 'x')}_{f}f"
                    tokens = (1 + (f - 1) // st) * (h // sh) * (w // sw)
                    batch = int(manual.pop(name, _batch_size(tokens, budget, multiple)))
                    if batch < 1 or batch % multiple:
                        raise ValueError(f"buckets.batch_sizes[{name!r}]={batch}: must be a "
                                         f"positive multiple of batch_multiple={multiple}")
                    weight = float(weights.get(name, weights.get(res, 1.0)))
                    buckets.append(Bucket(name, res, aspect, int(f), h, w, tokens, batch, weight))
        if manual:
            raise ValueError(f"buckets.batch_sizes: unknown bucket(s) {sorted(manual)}")
        return cls(tuple(buckets), tuple(c["aspect_ratios"]), float(c.get("fps", 0.0)),
                   float(c.get("max_upscale", 1.0)))

    def index(self, name: str) -> int:
        """The position of the bucket called `name`."""
        for k, bucket in enumerate(self.buckets):
            if bucket.name == name:
                return k
        raise KeyError(f"no bucket {name!r}")

    def frame_stride(self, fps: float) -> int:
        """Every how many frames a clip at `fps` is read to reach the target rate."""
        return max(1, round(fps / self.fps)) if self.fps > 0 and fps > 0 else 1

    def frames_at_rate(self, clip: ClipInfo) -> int:
        """How many of the clip's frames a read at the table's frame rate can take."""
        return (clip.num_frames - 1) // self.frame_stride(clip.fps) + 1

    @functools.cached_property
    def _by_aspect(self) -> dict[str, list[int]]:
        """Bucket indices per aspect ratio, largest first."""
        order = sorted(range(len(self.buckets)), key=lambda k: (
            -self.buckets[k].tokens, -self.buckets[k].height * self.buckets[k].width,
            -self.buckets[k].num_frames))
        return {a: [k for k in order if self.buckets[k].aspect == a] for a in self.aspects}

    def nearest_aspect(self, height: int, width: int) -> str:
        """The table's aspect ratio nearest width / height (in log ratio; first on ties)."""
        log_ratio = math.log(width / height)
        return min(self.aspects, key=lambda a: abs(math.log(parse_aspect(a)) - log_ratio))

    def assign(self, clip: ClipInfo, enabled: Sequence[bool] | None = None) -> int | None:
        """The bucket `clip` goes to (see the module docstring), or None if it fills none."""
        if min(clip.num_frames, clip.height, clip.width) < 1:
            return None
        available = self.frames_at_rate(clip)
        for k in self._by_aspect[self.nearest_aspect(clip.height, clip.width)]:
            b = self.buckets[k]
            if (enabled is None or enabled[k]) and b.weight > 0 and b.num_frames <= available \
                    and max(b.height / clip.height, b.width / clip.width) <= self.max_upscale:
                return k
        return None


@dataclasses.dataclass(frozen=True)
class BucketPlan:
    """The records of each bucket (ascending record indices) and the number rejected."""

    table: BucketTable
    members: tuple[np.ndarray, ...]
    rejected: int

    def slots_per_epoch(self) -> list[int]:
        """m_k: how many clip slots bucket k fills per epoch."""
        return [round(b.weight * len(m)) for b, m in zip(self.table.buckets, self.members)]


def make_plan(table: BucketTable, clips: Sequence[ClipInfo | None]) -> BucketPlan:
    """Assigns every clip (None: unreadable); while some bucket cannot fill one global batch per
    epoch, drops the largest such bucket and reassigns its clips (to smaller buckets)."""
    enabled = [b.weight > 0 for b in table.buckets]

    def assign(clip: ClipInfo | None) -> int:
        return -1 if clip is None or (k := table.assign(clip, enabled)) is None else k

    assigned = np.array([assign(c) for c in clips], np.int64)
    while True:
        members = tuple(np.flatnonzero(assigned == k) for k in range(len(table.buckets)))
        plan = BucketPlan(table, members, int(np.sum(assigned < 0)))
        small = [k for k, (m, b) in enumerate(zip(plan.slots_per_epoch(), table.buckets))
                 if 0 < m < b.batch_size]
        if not small:
            return plan
        k = max(small, key=lambda k: (table.buckets[k].tokens, table.buckets[k].num_frames))
        enabled[k] = False
        assigned[members[k]] = [assign(clips[i]) for i in members[k]]


@functools.lru_cache(maxsize=256)
def _lap_order(seed: int, bucket: int, epoch: int, lap: int, n: int) -> np.ndarray:
    """The order in which a bucket's n clips are used in one lap."""
    return np.random.default_rng([seed, 1, bucket, epoch, lap]).permutation(n).astype(np.int32)


@functools.lru_cache(maxsize=4)
def _epoch_steps(batch_sizes: tuple[int, ...], slots: tuple[int, ...], seed: int,
                 epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Schedule epoch `epoch`: the bucket of each of its steps and that bucket's global batch
    index (counted from the start of training)."""
    before = [epoch * m // b for m, b in zip(slots, batch_sizes)]
    counts = [(epoch + 1) * m // b - c for m, b, c in zip(slots, batch_sizes, before)]
    ids = np.repeat(np.arange(len(slots)), counts)
    ids = ids[np.random.default_rng([seed, 0, epoch]).permutation(len(ids))]
    order = np.argsort(ids, kind="stable")
    rank = np.empty(len(ids), np.int64)
    rank[order] = np.arange(len(ids)) - np.repeat(np.cumsum(counts) - counts, counts)
    return ids, np.asarray(before, np.int64)[ids] + rank


@dataclasses.dataclass(frozen=True)
class BucketSchedule:
    """Which bucket, which of its global batches and which clips step s uses (module doc)."""

    plan: BucketPlan
    seed: int

    def __post_init__(self):
        if not any(self.plan.slots_per_epoch()):
            raise ValueError("no bucket holds a clip: every clip was rejected by the bucket "
                             f"table ({self.plan.rejected} rejected)")

    @functools.cached_property
    def _sizes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (tuple(b.batch_size for b in self.plan.table.buckets),
                tuple(self.plan.slots_per_epoch()))

    def epoch_start(self, epoch: int) -> int:
        """The first step of schedule epoch `epoch`."""
        return sum(epoch * m // b for b, m in zip(*self._sizes))

    def epoch_of(self, step: int) -> int:
        """The schedule epoch that step `step` falls in."""
        rate = sum(m / b for b, m in zip(*self._sizes))
        epoch = int(step // rate)
        while epoch > 0 and self.epoch_start(epoch) > step:
            epoch -= 1
        while self.epoch_start(epoch + 1) <= step:
            epoch += 1
        return epoch

    def at(self, step: int) -> tuple[int, int]:
        """(bucket index, that bucket's global batch index) of step `step`."""
        epoch = self.epoch_of(step)
        ids, batches = _epoch_steps(*self._sizes, self.seed, epoch)
        position = step - self.epoch_start(epoch)
        return int(ids[position]), int(batches[position])

    def clip_at(self, bucket: int, slot: int, offset: int = 0) -> tuple[int, int, int]:
        """(record index, bucket epoch, lap) of slot `slot` of a bucket's stream; `offset`
        moves along the same lap (a stand-in for an undecodable clip)."""
        members = self.plan.members[bucket]
        n, m = len(members), self._sizes[1][bucket]
        epoch, position = divmod(slot, m)
        lap, i = divmod(position, n)
        order = _lap_order(self.seed, bucket, epoch, lap, n)
        return int(members[order[(i + offset) % n]]), epoch, lap

    def host_batch(self, step: int, shard: grain.sharding.ShardOptions
                   ) -> tuple[int, list[int]]:
        """(bucket, slots) that host `shard.shard_index` of `shard.shard_count` reads at
        `step`: the host's contiguous share of the step's global batch."""
        bucket, batch = self.at(step)
        size = self.plan.table.buckets[bucket].batch_size
        if size % shard.shard_count:
            raise ValueError(f"bucket {self.plan.table.buckets[bucket].name}: global batch "
                             f"{size} does not split over {shard.shard_count} hosts")
        local = size // shard.shard_count
        first = batch * size + shard.shard_index * local
        return bucket, list(range(first, first + local))
