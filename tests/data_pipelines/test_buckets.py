"""data_pipelines.buckets: the table from a config, assignment examples worked out by hand, the
plan's dropping of underfilled buckets, and the schedule's laps and epochs."""

import collections

import numpy as np
import pytest

from data_pipelines import bucket_report, buckets
from data_pipelines.buckets import ClipInfo

# Worked by hand below: strides 16 px and 4 frames; 10 fps; budget 32768 tokens in batches of 4k.
CONFIG = dict(resolutions={"256px": 256 * 256, "480p": 480 * 848},
              aspect_ratios=("9:16", "1:1", "16:9"), num_frames=(1, 17, 33), fps=10.0,
              token_stride=(4, 16, 16), max_upscale=1.0, tokens_per_step=32768,
              batch_multiple=4, batch_sizes={"480p_16x9_33f": 8}, weights={"256px": 2.0})


@pytest.fixture(scope="module")
def table() -> buckets.BucketTable:
    return buckets.BucketTable.from_config(CONFIG)


def test_table_shapes_batches_and_weights(table):
    assert len(table.buckets) == 2 * 3 * 3
    b = table.buckets[table.index("256px_16x9_17f")]
    # h = 256 / sqrt(16/9) = 192, w = 256 * 4/3 = 341.3 -> 336; tokens (1 + 16/4) * 12 * 21.
    assert (b.num_frames, b.height, b.width, b.tokens) == (17, 192, 336, 1260)
    assert b.batch_size == 32768 // (1260 * 4) * 4 == 24 and b.weight == 2.0
    portrait = table.buckets[table.index("256px_9x16_17f")]
    assert (portrait.height, portrait.width) == (336, 192)
    big = table.buckets[table.index("480p_16x9_33f")]
    # sqrt(407040 / (16/9)) = 478.5 -> 480, sqrt(407040 * 16/9) = 850.7 -> 848; set by hand.
    assert (big.height, big.width, big.tokens, big.batch_size, big.weight) == (
        480, 848, 9 * 30 * 53, 8, 1.0)
    # Over budget on its own: the smallest allowed batch, one batch_multiple.
    assert table.buckets[table.index("480p_1x1_33f")].batch_size == 4
    for b in table.buckets:
        assert b.height % 16 == 0 and b.width % 16 == 0 and (b.num_frames - 1) % 4 == 0


def test_bad_tables_name_the_culprit():
    with pytest.raises(ValueError, match="num_frames: 8"):
        buckets.BucketTable.from_config(CONFIG | {"num_frames": (1, 8)})
    with pytest.raises(ValueError, match="multiple of batch_multiple"):
        buckets.BucketTable.from_config(CONFIG | {"batch_sizes": {"480p_16x9_33f": 6}})
    with pytest.raises(ValueError, match="unknown bucket"):
        buckets.BucketTable.from_config(CONFIG | {"batch_sizes": {"720p_16x9_33f": 8}})
    with pytest.raises(ValueError, match="'W:H'"):
        buckets.parse_aspect("16/9")


@pytest.mark.parametrize("clip, want", [
    (ClipInfo(300, 30.0, 1080, 1920), "480p_16x9_33f"),   # every 3rd frame: 100 available
    (ClipInfo(100, 25.0, 360, 640), "256px_16x9_33f"),    # 480 px would upscale 360 px
    (ClipInfo(20, 10.0, 360, 640), "256px_16x9_17f"),     # 20 frames: 33 do not fit
    (ClipInfo(40, 10.0, 640, 360), "256px_9x16_33f"),     # portrait; 848 px tall > 640
    (ClipInfo(1, 0.0, 1000, 1000), "480p_1x1_1f"),        # a still image
    (ClipInfo(60, 10.0, 400, 800), "256px_16x9_33f"),     # 2:1 is nearest 16:9 in log ratio
    (ClipInfo(60, 10.0, 100, 100), None),                 # smaller than every bucket
])
def test_assignment_examples(table, clip, want):
    got = table.assign(clip)
    assert (None if got is None else table.buckets[got].name) == want


def test_upscale_factor_and_rotation():
    lenient = buckets.BucketTable.from_config(CONFIG | {"max_upscale": 1.34})
    clip = ClipInfo(100, 10.0, 360, 640)            # 480 / 360 = 1.33: allowed now
    assert lenient.buckets[lenient.assign(clip)].name == "480p_16x9_33f"
    info = buckets.clip_info({"num_frames": 40, "fps": 10, "height": 360, "width": 640,
                              "rotation": 90})
    assert (info.height, info.width) == (640, 360)  # displayed upright: portrait


SMALL = dict(resolutions={"a": 32 * 32}, aspect_ratios=("1:1",), num_frames=(1, 5), fps=0.0,
             token_stride=(4, 8, 8), max_upscale=1.0, tokens_per_step=64, batch_multiple=1)


def test_plan_drops_buckets_that_cannot_fill_a_batch():
    table = buckets.BucketTable.from_config(SMALL)     # 5f: 32 tokens, batch 2; 1f: batch 4
    video, still = ClipInfo(10, 8.0, 32, 32), ClipInfo(1, 0.0, 32, 32)
    plan = buckets.make_plan(table, [video, still, still, None, still])
    assert [len(m) for m in plan.members] == [4, 0] and plan.rejected == 1
    assert plan.members[0].tolist() == [0, 1, 2, 4]   # the lone video joined the stills
    plan = buckets.make_plan(table, [still] * 3)
    assert plan.rejected == 3
    with pytest.raises(ValueError, match="no bucket holds a clip"):
        buckets.BucketSchedule(plan, seed=0)


def _schedule(counts: dict[str, int], weights=None, seed=0) -> buckets.BucketSchedule:
    """A schedule over clips that land in the named 16:9 buckets of CONFIG, `count` each."""
    table = buckets.BucketTable.from_config(CONFIG | {"weights": weights or {}})
    shapes = {"480p_16x9_33f": ClipInfo(300, 30.0, 1080, 1920),
              "256px_16x9_33f": ClipInfo(100, 25.0, 360, 640),
              "256px_16x9_17f": ClipInfo(20, 10.0, 360, 640)}
    clips = [shapes[name] for name, n in counts.items() for _ in range(n)]
    return buckets.BucketSchedule(buckets.make_plan(table, clips), seed)


def test_each_lap_is_a_permutation_and_weights_repeat_clips():
    schedule = _schedule({"480p_16x9_33f": 20, "256px_16x9_17f": 30}, {"256px": 2.0})
    plan = schedule.plan
    for k, members in enumerate(plan.members):
        if not len(members):
            continue
        m = plan.slots_per_epoch()[k]
        laps = [schedule.clip_at(k, j)[0] for j in range(2 * m)]
        copies = m // len(members)                 # 1 for 480p, 2 for the weighted 256px
        for epoch in range(2):
            seen = collections.Counter(laps[epoch * m:(epoch + 1) * m])
            assert seen == {int(i): copies for i in members}
        assert laps[:len(members)] != laps[m:m + len(members)]    # reshuffled each epoch


def test_epochs_hold_each_bucket_for_its_share_of_steps():
    schedule = _schedule({"480p_16x9_33f": 20, "256px_16x9_33f": 30})
    sizes = {k: (b.batch_size, schedule.plan.slots_per_epoch()[k])
             for k, b in enumerate(schedule.plan.table.buckets)}
    for epoch in range(3):
        start, stop = schedule.epoch_start(epoch), schedule.epoch_start(epoch + 1)
        got = collections.Counter(schedule.at(s)[0] for s in range(start, stop))
        want = {k: (epoch + 1) * m // b - epoch * m // b for k, (b, m) in sizes.items()}
        assert got == {k: n for k, n in want.items() if n}
        assert all(schedule.epoch_of(s) == epoch for s in (start, stop - 1))
    # A bucket's global batches come in order, each exactly once.
    batches = collections.defaultdict(list)
    for s in range(schedule.epoch_start(3)):
        k, g = schedule.at(s)
        batches[k].append(g)
    assert all(g == list(range(len(g))) for g in batches.values())
    other = _schedule({"480p_16x9_33f": 20, "256px_16x9_33f": 30}, seed=1)
    assert [other.at(s) for s in range(8)] != [schedule.at(s) for s in range(8)]


def test_report_counts_tokens_steps_and_crop_loss():
    table = buckets.BucketTable.from_config(CONFIG | {"weights": {}})
    wide = ClipInfo(300, 30.0, 1080, 2560)          # 2.37:1 into 16:9 (848 / 480 = 1.77)
    clips = [ClipInfo(300, 30.0, 1080, 1920)] * 8 + [wide] * 8
    plan = buckets.make_plan(table, clips)
    (row,) = bucket_report.bucket_rows(plan, clips)
    assert row["clips"] == 16 and row["tokens"] == 16 * 9 * 30 * 53 and row["steps"] == 2
    # 1920x1080 -> cover 480x853, keep 480x848; 2560x1080 -> cover 480x1138.
    crop = [1 - 848 / 853, 1 - 848 / 1138]
    lost = sum(row["tokens"] / 16 * c / (1 - c) * 8 for c in crop)
    np.testing.assert_allclose(row["lost"], lost, rtol=1e-9)
    np.testing.assert_allclose(row["unused"], 1 - 33 / 100)
    assert "cropping throws away" in bucket_report.format_report([row], plan.rejected)
