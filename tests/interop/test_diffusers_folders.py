"""Whole diffusers folders (config.json + safetensors, sharded with an index json) written by
diffusers' own save_pretrained and by ours, read by wan_dit / wan_vae.load_pretrained; bfloat16
weights; and clear errors, naming the key, for corrupted files. (Exported folders loaded by
diffusers and run against our forward: tests/launch/test_export.py.)"""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidgen.interop import safetensors_io, wan_dit, wan_vae

from test_wan_dit import SMALL as DIT_SMALL   # tests/interop is on sys.path (no rootdir)
from test_wan_dit import _diffusers_model as _diffusers_dit
from test_wan_dit import _abstract
from test_wan_vae import SMALL as VAE_SMALL
from test_wan_vae import _diffusers_model as _diffusers_vae

SHARD = "50KB"                  # small enough that diffusers splits the tiny models into shards


def _index(folder) -> dict:
    return json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())


@pytest.mark.parametrize("name", ["dit", "vae"])
def test_sharded_folder_from_diffusers(tmp_path, name):
    """diffusers' own save_pretrained in 2+ shards with an index, read by our load_pretrained:
    every tensor arrives (the mapping's forward parity is tested in test_wan_dit/_vae)."""
    torch = pytest.importorskip("torch")
    make, cfg, lib = {"dit": (_diffusers_dit, DIT_SMALL, wan_dit),
                      "vae": (_diffusers_vae, VAE_SMALL, wan_vae)}[name]
    reference = make(torch, cfg)
    reference.save_pretrained(tmp_path, max_shard_size=SHARD)
    assert len(set(_index(tmp_path)["weight_map"].values())) > 1
    model = lib.load_pretrained(tmp_path)
    assert model.config == cfg
    again = lib.export_state_dict(model)
    for key, value in reference.state_dict().items():
        np.testing.assert_array_equal(again[key], value.numpy(), err_msg=key)


def test_bfloat16_folder(tmp_path):
    torch = pytest.importorskip("torch")
    reference = _diffusers_dit(torch, DIT_SMALL).to(torch.bfloat16)
    reference.save_pretrained(tmp_path)
    model = wan_dit.load_pretrained(tmp_path)
    q = np.asarray(model.blocks.attn1.to_q.kernel[...])            # [layers, D, H, K] float32
    want = reference.blocks[1].attn1.to_q.weight.detach().float().numpy().T
    np.testing.assert_array_equal(q[1].reshape(want.shape), want)


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    """Our random DiT written by save_pretrained as a diffusers folder in 3+ shards with an
    index, and its state dict."""
    folder = tmp_path_factory.mktemp("good")
    model = _abstract(DIT_SMALL)                # random values without the (slow) initialisers
    params = nnx.state(model, nnx.Param)
    rng = np.random.default_rng(8)
    for _, var in nnx.to_flat_state(params):
        var.set_value(jnp.asarray(rng.normal(size=var.shape).astype(np.float32)))
    nnx.update(model, params)
    files = wan_dit.save_pretrained(model, folder, max_shard_bytes=40_000)
    assert len(files) > 2 and sorted(set(_index(folder)["weight_map"].values())) == files
    return folder, wan_dit.export_state_dict(model)


def test_our_sharded_folder_round_trips(good_folder):
    folder, weights = good_folder
    again = wan_dit.export_state_dict(wan_dit.load_pretrained(folder))
    assert again.keys() == weights.keys()
    assert all(np.array_equal(again[k], v) for k, v in weights.items())


def _corrupt(good, folder, how: str) -> str:
    """Copies the good folder into folder with one entry corrupted; returns the culprit key."""
    from safetensors.numpy import load_file, save_file
    index = _index(good)
    key = "blocks.1.attn2.to_out.0.weight"
    for file in sorted(set(index["weight_map"].values())):
        tensors = load_file(str(good / file))
        if key in tensors:
            if how == "shape":
                tensors[key] = tensors[key][:, :-1].copy()
            elif how == "dtype":
                tensors[key] = tensors[key].astype(np.int32)
            elif how in ("missing", "misplaced"):
                del tensors[key]
        save_file(tensors, str(folder / file))
    if how == "missing":
        del index["weight_map"][key]
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text((good / "config.json").read_text())
    return key


@pytest.mark.parametrize("how,message", [
    ("shape", r"shape \(48, 47\), expected \(48, 48\)"), ("dtype", "not floating point"),
    ("missing", "missing keys"), ("misplaced", "the index puts it in")])
def test_corrupted_folder_names_the_key(good_folder, tmp_path, how, message):
    key = _corrupt(good_folder[0], tmp_path, how)
    with pytest.raises(ValueError, match=message) as error:
        wan_dit.load_pretrained(tmp_path)
    print(f"{how}: {error.value}")
    assert key in str(error.value)


def test_folder_checks(good_folder, tmp_path):
    good = good_folder[0]
    index = _index(good)
    first = sorted(set(index["weight_map"].values()))[0]
    (tmp_path / "config.json").write_text((good / "config.json").read_text())
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match=first):              # a shard is missing
        wan_dit.load_pretrained(tmp_path)
    with pytest.raises(ValueError, match="_class_name='WanTransformer3DModel'"):
        wan_vae.load_pretrained(good)
    with pytest.raises(FileExistsError, match="already holds"):
        safetensors_io.write_weights(good, [("a", np.zeros(2, np.float32))])
