"""The README's demo path at toy scale, through the real command lines: world -> tokenizer ->
VAE -> precomputed latents -> DiT -> samples for held-out prompts, graded. Checks that every
stage hands the next what it needs and that the outputs exist; quality is the demo's business.
The DiT stage runs twice: with the demo's jointly trained text encoder, and frozen from a
pretrained T5 folder (random weights from transformers), as a Wan-style run would."""

import json
import os
import subprocess
import sys

import grain
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from data_pipelines import pipeline, shards
from vidgen.train.tasks import dit as dit_task

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args: str) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)                      # one device, as a user's run
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def test_world_tokenizer_vae_dit_sample(tmp_path):
    world, runs = tmp_path / "world", tmp_path / "runs"
    _run("data_pipelines.synthetic_world", f"--out={world}", "--num_clips=12",
         "--num_eval_clips=2", "--num_heldout_prompts=2", "--aspect=1:1", "--base_size=64",
         "--num_shards=2", "--notfds")
    _run("data_pipelines.train_tokenizer", f"--captions={world}/captions.jsonl",
         f"--out={runs}/tok", "--vocab_size=128")
    _run("launch.train", "--config=launch/configs/vae_tiny.py:tiny", f"--workdir={runs}/vae",
         f"--config.data.path={world}")
    _run("data_pipelines.precompute", f"--vae_workdir={runs}/vae", f"--data={world}",
         "--num_frames=5", "--height=64", "--width=64", "--frame_stride=0",
         f"--out={runs}/latents")
    # The stored latents are what the dit task computes on the fly from the same clips.
    clips = pipeline.load_eval_clips(shards.find_shards(str(world), "train"), num_frames=5,
                                     height=64, width=64, num_clips=None, frame_stride=0)
    want = np.asarray(dit_task.latent_encoder(str(runs / "vae"))(jnp.asarray(clips["video"])))
    source = grain.sources.ArrayRecordDataSource(shards.find_shards(str(runs / "latents"),
                                                                    "train"))
    stored = {meta["id"]: shards.array_from_bytes(payload)
              for meta, payload in map(shards.decode_record, source)}
    assert sorted(stored) == sorted(clips["id"]) and want.shape[1:] == (2, 8, 8, 16)
    for clip_id, latents in zip(clips["id"], want):
        np.testing.assert_allclose(stored[clip_id], latents, atol=1e-5)
    latent_batch = next(iter(pipeline.make_latent_dataset(
        shards.find_shards(str(runs / "latents"), "train"), batch_size=4, seed=0)))
    assert latent_batch["latents"].shape == (4, 2, 8, 8, 16)
    log = _run("launch.train", "--config=launch/configs/dit_tiny.py:tiny",
               f"--workdir={runs}/dit", f"--config.data.path={world}",
               f"--config.vae.workdir={runs}/vae", f"--config.text.tokenizer={runs}/tok.model")
    assert "eval at step 4" in log and "grader_overall" in log
    result = json.load(open(runs / "dit" / "result.json"))
    assert result["step"] == 4 and "val_loss" in result["eval"]
    assert (runs / "dit" / "eval" / "step_0000004" / "contact_sheet.png").exists()
    _run("launch.sample", f"--checkpoint={runs}/dit", f"--prompts_file={world}/heldout.jsonl",
         "--steps=2", "--sampler=heun", f"--out={runs}/samples")
    samples = sorted(os.listdir(runs / "samples"))
    assert samples == ["000.mp4", "001.mp4", "contact_sheet.png", "metrics.json",
                       "prompts.json"]
    metrics = json.load(open(runs / "samples" / "metrics.json"))
    assert metrics["summary"]["clips"] == 2 and 0.0 <= metrics["summary"]["overall"] <= 1.0
    # A frozen pretrained text encoder (a random transformers T5 folder): training, its
    # evaluation (validation loss and graded samples) and sampling from the checkpoint.
    _random_t5_folder(runs / "t5", vocab_size=128)
    log = _run("launch.train", "--config=launch/configs/dit_tiny.py:tiny",
               f"--workdir={runs}/dit_frozen", f"--config.data.path={world}",
               f"--config.vae.workdir={runs}/vae", f"--config.text.tokenizer={runs}/tok.model",
               "--config.text.trainable=False", f"--config.text.pretrained={runs}/t5")
    assert "eval at step 4" in log and "grader_overall" in log
    _run("launch.sample", f"--checkpoint={runs}/dit_frozen",
         f"--prompts_file={world}/heldout.jsonl", "--steps=2", f"--out={runs}/samples_frozen")
    assert (runs / "samples_frozen" / "metrics.json").exists()


def _random_t5_folder(folder: os.PathLike, vocab_size: int) -> None:
    """A transformers T5 encoder folder (config.json + model.safetensors) of random weights,
    shaped like the tiny config's text encoder."""
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=vocab_size, d_model=32, d_kv=16, d_ff=64,
                                   num_layers=1, num_heads=2, feed_forward_proj="gated-gelu")
    transformers.T5EncoderModel(config).save_pretrained(folder)
