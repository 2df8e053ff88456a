"""launch/evaluate.py on tiny runs (a VAE and a DiT over it, two checkpoints each, on a small
synthetic world): the 2 checkpoints x 2 CFG scales x 2 step counts sweep of the DiT finishes
with its metrics table and gallery and a rerun skips every cell; the VAE sweep scores
reconstructions; bad flags fail naming the flag. The command runs in this process on its own
FlagValues, exactly as `python -m launch.evaluate` parses them.

The runs' checkpoints hold random weights saved by the training loop's own Checkpointer (EMA
parameters, config, result extras: all a sweep reads): training them here would cost two
compilations per model, minutes on a loaded 2-core machine. tests/launch/test_end_to_end.py
trains and samples the real thing."""

import csv
import json
import logging
import os

import grain
import numpy as np
import pytest
from absl import app, flags
from flax import nnx

from data_pipelines import synthetic_world, train_tokenizer
from launch import evaluate
from launch.configs import dit_tiny, vae_tiny
from vidgen.evaluation import metrics
from vidgen.io.video import read_video
from vidgen.train import checkpoint
from vidgen.train import state as state_lib
from vidgen.train.tasks import dit as dit_task
from vidgen.train.tasks import vae as vae_task

SIZE = (5, 32, 32)


def _random_params(params: nnx.State, seed: int) -> nnx.State:
    """Fills abstract parameters from NumPy (no compilation): norm scales near 1, other
    vectors small, matrices scaled by their fan-in."""
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(params):
        if path[-1] == "scale":
            value = 1 + 0.1 * rng.normal(size=var.shape)
        elif len(var.shape) < 2:
            value = 0.1 * rng.normal(size=var.shape)
        else:
            value = rng.normal(size=var.shape) / np.sqrt(np.prod(var.shape[:-1]))
        var.set_value(np.asarray(value, var.dtype))
    return params


def _write_run(workdir, task, config, extras=None) -> None:
    """Checkpoints at steps 1 and 2, as the training loop writes them."""
    ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), every_steps=1, keep=2,
                                   async_save=False)
    data = iter(grain.MapDataset.range(1).to_iter_dataset())
    for step in (1, 2):
        _, params, rest = state_lib.abstract_model(lambda: task.build_model(config, nnx.Rngs(0)))
        meta = {"task": task.name, "config": json.loads(config.to_json_best_effort()),
                "result": {"step": step, "extras": extras}}
        ckpt.save(step, {"ema": _random_params(params, step), "rest": rest}, data, meta,
                  force=True)
    ckpt.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A world with 3 held-out prompts, a VAE run and a DiT run over it."""
    root = tmp_path_factory.mktemp("runs")
    world = root / "world"
    synthetic_world.generate_world(str(world), num_clips=6, num_eval_clips=2, base_size=32,
                                   num_shards=1, show_progress=False, num_heldout_prompts=3,
                                   aspect="1:1")
    tokenizer = train_tokenizer.train_tokenizer(str(world / "captions.jsonl"),
                                                str(root / "tok"), vocab_size=64,
                                                fields=("caption",))
    vae = vae_tiny.get_config("tiny")
    vae.model.update(base_channels=4, channel_mults=(1, 1), temporal_downsample=(True,),
                     z_channels=4, patch_size=1)
    dit = dit_tiny.get_config("tiny")
    dit.model.update(in_channels=4, out_channels=4)
    dit.text.update(tokenizer=tokenizer)
    dit.text.encoder.vocab_size = 64
    dit.vae.workdir = str(root / "vae")
    for config in (vae, dit):
        config.data.update(path=str(world), num_frames=SIZE[0], height=SIZE[1], width=SIZE[2])
    _write_run(root / "vae", vae_task.TASK, vae, {"latent_mean": [0.0] * 4,
                                                  "latent_std": [1.0] * 4})
    _write_run(root / "dit", dit_task.TASK, dit)
    return root


def _evaluate(*args):
    values = flags.FlagValues()
    evaluate.define_flags(values)
    values(["evaluate", *args])
    return evaluate.run(values)


def test_dit_sweep_writes_the_table_and_resumes(runs, caplog):
    out = runs / "sweep"
    args = [f"--checkpoints={runs / 'dit'}", "--steps_to_eval=1,2", "--cfg_scales=1,3",
            "--sample_steps=1,2", f"--out={out}"]
    results = _evaluate(*args)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(results) == len(rows) == 8
    assert {(int(r["step"]), float(r["cfg_scale"]), int(r["num_steps"])) for r in rows} == {
        (s, c, n) for s in (1, 2) for c in (1.0, 3.0) for n in (1, 2)}
    for row in rows:
        print({k: row[k] for k in ("key", "fvd", "grader_overall", "temporal_consistency")})
        assert float(row["fvd"]) >= 0 and 0 <= float(row["grader_overall"]) <= 1
        assert 0 <= float(row["temporal_consistency"]) <= 1
    for result in results:
        assert len(result["videos"]) == 3
        assert read_video(str(out / result["videos"][0]["video"])).shape == SIZE + (3,)
    assert (out / "gallery.html").read_text().count("<video ") == 24
    assert json.load(open(out / "metrics.json"))["fvd_features"] == "pixel_motion"
    assert os.listdir(out / "tensorboard")
    stamps = {r["key"]: os.stat(out / "cells" / r["key"] / "result.json").st_mtime_ns
              for r in results}
    with caplog.at_level(logging.INFO, logger="vidgen.evaluation.sweep"):
        again = _evaluate(*args)
    assert "8 done before, 0 to run" in caplog.text
    assert again == results
    assert stamps == {r["key"]: os.stat(out / "cells" / r["key"] / "result.json").st_mtime_ns
                      for r in results}


def test_vae_sweep_scores_reconstructions(runs):
    out = runs / "vae_sweep"
    results = _evaluate(f"--checkpoints={runs / 'vae'}", "--steps_to_eval=1,2", f"--out={out}")
    assert [r["key"] for r in results] == ["step0000001", "step0000002"]
    table = json.load(open(out / "metrics.json"))["cells"]
    for row, result in zip(table, results):
        assert row["psnr"] == result["metrics"]["psnr"] and 0 < row["ssim"] <= 1
        # The written original | reconstruction mp4s agree with the reported PSNR.
        side = read_video(str(out / result["videos"][0]["video"]))
        half = (side.shape[2] - 2) // 2
        db = float(metrics.psnr(side[None, :, :, :half], side[None, :, :, -half:])[0])
        print(f"step {row['step']}: psnr {row['psnr']:.2f} dB, from the mp4 {db:.2f} dB")
        assert abs(db - row["psnr"]) < 2.0
    assert (out / "gallery.html").read_text().count("<video ") == 2 * len(results[0]["videos"])


@pytest.mark.parametrize("flag,match", [
    ("--resolutions=32by32", "--resolutions=32by32"),
    ("--steps_to_eval=7", r"no checkpoint at \[7\]"),
    ("--samplers=rk4", "solver 'rk4'"),
])
def test_bad_flags_name_themselves(runs, flag, match):
    with pytest.raises(app.UsageError, match=match):
        _evaluate(f"--checkpoints={runs / 'dit'}", flag, f"--out={runs / 'bad'}")
