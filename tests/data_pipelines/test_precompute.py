"""data_pipelines.precompute: the CLI (new flag names and the old aliases), fixed-shape and
bucketed clip shapes, and the latents / caption-feature payload the pipelines read back. The
VAE is replaced by a pooling stand-in here; tests/launch/test_end_to_end.py runs a real one."""

import os

import grain
import numpy as np
import pytest
from absl import flags
from flax import nnx
from ml_collections import ConfigDict

from data_pipelines import bucketed, buckets, pipeline, precompute, shards, train_tokenizer
from launch.configs import dit_tiny
from vidgen.io import video as video_io
from vidgen.models.text_encoder import TextEncoder, TextEncoderConfig, Tokenizer
from vidgen.train.tasks import dit as dit_task

# 32x48 landscape and 48x32 portrait clips of 10 frames, every third record undecodable.
BUCKETS = dict(resolutions={"s": 32 * 32}, aspect_ratios=("2:3", "3:2"), num_frames=(1, 5, 9),
               fps=0.0, token_stride=(4, 8, 8), max_upscale=1.0, tokens_per_step=64,
               batch_multiple=1)


def _fake_encoder(vae_workdir: str):
    """uint8 video [B, T, H, W, 3] -> 'latents' [B, 1 + (T-1)/4, H/8, W/8, 3]: frame 0 and
    every 4th one, mean-pooled over 8x8 pixels, in [-1, 1]."""
    del vae_workdir

    def encode(video):
        v = np.asarray(video, np.float32)[:, ::4] / 127.5 - 1
        b, t, h, w, c = v.shape
        return v.reshape(b, t, h // 8, 8, w // 8, 8, c).mean(axis=(3, 5))

    return encode


@pytest.fixture(autouse=True)
def fake_vae(monkeypatch):
    monkeypatch.setattr(precompute.dit_task, "latent_encoder", _fake_encoder)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("world")
    records = []
    for i in range(9):
        h, w = (32, 48) if i % 2 else (48, 32)
        t, y, x = np.ogrid[:10, :h, :w]
        rgb = np.broadcast_arrays((7 * x + 5 * t + 30 * i) % 256, (4 * y) % 256,
                                  (x + y + 9 * t) % 256)
        video = video_io.encode_video(np.stack(rgb, -1).astype(np.uint8), fps=8.0)
        records.append(({"id": f"c{i}", "caption": f"clip {i}", "num_frames": 10, "fps": 8.0,
                         "height": h, "width": w}, b"garbage" * 9 if i % 3 == 2 else video))
    shards.write_shards(records, str(root / "shards"), "train", num_shards=2)
    return str(root)


def _run(argv: list[str], tmp_path) -> tuple[dict, dict]:
    """Parses a precompute command line in fresh flags, runs it, reads back {id: (meta,
    arrays)}."""
    fv = flags.FlagValues()
    precompute.define_flags(fv)
    fv(["precompute", *argv, f"--out={tmp_path}/out"])
    stats = precompute.run(fv)
    source = grain.sources.ArrayRecordDataSource(shards.find_shards(f"{tmp_path}/out", "train"))
    stored = {}
    for record in source:
        meta, payload = shards.decode_record(record)
        stored[meta["id"]] = (meta, pipeline.read_latent_payload(payload))
    return stats, stored


def test_fixed_shape_under_the_old_flag_names_matches_eval_decoding(data, tmp_path):
    stats, stored = _run([f"--vae_workdir={data}/vae", f"--data={data}", "--num_frames=5",
                          "--height=16", "--width=24", "--batch_size=2"], tmp_path)
    assert stats["clips"] == 6 and stats["skipped"] == 3 and stats["unfit"] == 0
    clips = pipeline.load_eval_clips(shards.find_shards(data, "train"), num_frames=5,
                                     height=16, width=24, num_clips=None)
    want = _fake_encoder("")(clips["video"])
    assert sorted(stored) == sorted(clips["id"])
    for clip_id, latents in zip(clips["id"], want):
        meta, arrays = stored[clip_id]
        np.testing.assert_array_equal(arrays["latents"], latents)
        assert meta["latents"] == {"num_frames": 5, "height": 16, "width": 24, "frame_stride": 1,
                                   "bucket": None, "vae_workdir": f"{data}/vae",
                                   "text_encoder": None}


def test_bucketed_shapes_from_a_config(data, tmp_path, monkeypatch):
    config_file = tmp_path / "buckets_config.py"
    config_file.write_text("from ml_collections import ConfigDict\n\ndef get_config():\n"
                           f"    return ConfigDict({{'data': {{'buckets': {BUCKETS!r}}}}})\n")
    stats, stored = _run([f"--checkpoint={data}/vae", f"--shards={data}/shards/train-*",
                          f"--config={config_file}"], tmp_path)
    table = buckets.BucketTable.from_config(ConfigDict(BUCKETS))
    assert stats["clips"] == 6 and len(stored) == 6
    source = grain.sources.ArrayRecordDataSource(shards.find_shards(data, "train"))
    for meta, video in map(shards.decode_record, source):
        if meta["id"] not in stored:
            continue
        b = table.buckets[table.assign(buckets.clip_info(meta))]
        assert b.name == ("s_3x2_9f" if meta["height"] == 32 else "s_2x3_9f")
        frames, _ = bucketed.decode_to_bucket(meta, video, b, table, rng=None)
        got_meta, arrays = stored[meta["id"]]
        np.testing.assert_array_equal(arrays["latents"], _fake_encoder("")(frames[None])[0])
        assert got_meta["latents"]["bucket"] == b.name


def test_payload_with_caption_features_round_trips(tmp_path):
    latents = np.arange(24, dtype=np.float32).reshape(1, 2, 4, 3)
    context = np.linspace(0, 1, 10, dtype=np.float32).reshape(5, 2)
    arrays = pipeline.read_latent_payload(precompute._payload(latents, context))
    assert sorted(arrays) == ["context", "latents"]
    np.testing.assert_array_equal(arrays["latents"], latents)
    np.testing.assert_array_equal(arrays["context"], context)
    only = pipeline.read_latent_payload(precompute._payload(latents, None))
    assert list(only) == ["latents"]
    path = shards.write_shards([({"id": "a"}, precompute._payload(latents, context))],
                               str(tmp_path), "train", 1)
    element = pipeline.LatentDecoder()(pipeline.tagged_records(path)[0])
    np.testing.assert_array_equal(element["context"], context)


def test_shard_specs(data):
    want = shards.find_shards(data, "train")
    assert precompute.resolve_shards(data, "train") == want
    assert precompute.resolve_shards(os.path.join(data, "shards"), "train") == want
    assert precompute.resolve_shards(want[0], "ignored") == want[:1]
    with pytest.raises(FileNotFoundError, match="eval-"):
        precompute.resolve_shards(os.path.join(data, "shards"), "eval")


def test_frozen_text_features_are_stored_and_read_back_by_the_dit_task(data, tmp_path,
                                                                        monkeypatch):
    """--text_encoder stores each caption's features; the dit task's prepare_batch keeps them
    and only adds the empty prompt's."""
    captions = tmp_path / "captions.jsonl"
    words = ["red", "ball", "blue", "square", "falls", "moves", "left", "green", "star", "grows"]
    captions.write_text("".join(f'{{"caption": "{words[i % 10]} {words[(3 * i) % 10]} clip '
                                f'{i % 9}", "split": "train"}}\n' for i in range(60)))
    tok = train_tokenizer.train_tokenizer(str(captions), str(tmp_path / "tok"), vocab_size=48,
                                          fields=("caption",))
    cfg = TextEncoderConfig(vocab_size=48, d_model=8, d_kv=4, d_ff=16, num_layers=1,
                            num_heads=2)
    with nnx.use_eager_sharding(False):       # random weights from NumPy: no init compiles
        encoder = nnx.eval_shape(lambda: TextEncoder(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    for _, var in nnx.to_flat_state(nnx.state(encoder, nnx.Param)):
        var.set_value(np.asarray(rng.normal(size=var.shape), np.float32))
    encode = nnx.jit(lambda m, ids, mask: m(ids, mask))
    monkeypatch.setattr(dit_task.hf_t5, "load_pretrained", lambda path: encoder)
    _, stored = _run([f"--checkpoint={data}/vae", f"--shards={data}", "--num_frames=5",
                      "--height=16", "--width=24", f"--text_encoder={tmp_path}/t5",
                      f"--tokenizer={tok}", "--max_length=8"], tmp_path)
    meta, arrays = stored["c0"]
    ids, mask = Tokenizer(tok, 8)([meta["caption"]])
    want = np.asarray(encode(encoder, ids, mask))[0]
    np.testing.assert_allclose(arrays["context"], want, atol=1e-6)
    assert meta["latents"]["text_encoder"] == f"{tmp_path}/t5"
    config = dit_tiny.get_config("tiny")
    config.text.update(trainable=False, pretrained=f"{tmp_path}/t5", tokenizer=tok, max_length=8)
    batch = {"latents": arrays["latents"][None], "context": arrays["context"][None],
             "text_ids": ids, "text_mask": mask}
    out = dit_task.prepare_batch(config)(batch)
    np.testing.assert_array_equal(np.asarray(out["context"]), batch["context"])
    null_ids, null_mask = Tokenizer(tok, 8)([""])
    np.testing.assert_allclose(np.asarray(out["null_context"]),
                               np.asarray(encode(encoder, null_ids, null_mask))[0], atol=1e-6)
