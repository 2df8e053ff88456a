"""Our CausalVAE against diffusers' AutoencoderKLWan (the published Wan 2.1 VAE implementation),
and the state-dict mapping's error reporting."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidgen.interop import wan_vae
from vidgen.models.vae import CausalVAE, VAEConfig

SMALL = VAEConfig(base_channels=12, channel_mults=(1, 2, 2, 2), num_res_blocks=1, z_channels=4)
TOL = 1e-4


def _abstract(cfg: VAEConfig) -> CausalVAE:
    return nnx.eval_shape(lambda: CausalVAE(cfg, rngs=nnx.Rngs(0)))


def _numpy_state_dict(cfg: VAEConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """A random diffusers-layout state dict for cfg, through our exporter."""
    vae = _abstract(cfg)
    rng = np.random.default_rng(seed)
    params = nnx.state(vae, nnx.Param)
    for _, var in nnx.to_flat_state(params):
        var.set_value(jnp.asarray(rng.normal(size=var.shape), jnp.float32))
    nnx.update(vae, params)
    return wan_vae.export_state_dict(vae)


def _diffusers_model(torch, cfg: VAEConfig):
    """A diffusers AutoencoderKLWan for cfg with every parameter randomised (not just the init)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.AutoencoderKLWan(
        base_dim=cfg.base_channels, z_dim=cfg.z_channels, dim_mult=list(cfg.channel_mults),
        num_res_blocks=cfg.num_res_blocks, attn_scales=[],
        temperal_downsample=list(cfg.temporal_downsample)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_parity_with_diffusers():
    torch = pytest.importorskip("torch")
    model = _diffusers_model(torch, SMALL)
    vae = _abstract(wan_vae.config_from_diffusers(dict(model.config)))
    wan_vae.load_state_dict(vae, model.state_dict())     # torch tensors are accepted as is
    encode = nnx.jit(lambda m, x: m.encode(x))
    decode = nnx.jit(lambda m, z: m.decode(z))
    to_ours = lambda t: t.permute(0, 2, 3, 4, 1).numpy()          # [B, C, T, H, W] -> channels-last
    for frames in (1, 5, 9):
        video = np.random.default_rng(frames).uniform(-1, 1, (2, frames, 16, 24, 3))
        video = video.astype(np.float32)
        with torch.no_grad():
            post = model.encode(torch.from_numpy(video).permute(0, 4, 1, 2, 3)).latent_dist
            recon = to_ours(model.decode(post.mean).sample)      # diffusers clamps to [-1, 1]
        ours = encode(vae, jnp.asarray(video))
        ours_recon = np.clip(np.asarray(decode(vae, jnp.asarray(to_ours(post.mean)))), -1, 1)
        errors = {"mean": np.abs(np.asarray(ours.mean) - to_ours(post.mean)).max(),
                  "logvar": np.abs(np.asarray(ours.logvar) - to_ours(post.logvar)).max(),
                  "decode": np.abs(ours_recon - recon).max()}
        print(f"T={frames} latents {ours.mean.shape}: max abs err {errors}")
        assert ours.mean.shape == (2, 1 + (frames - 1) // 4, 2, 3, 4)
        assert np.mean(np.abs(recon) < 1) > 0.5        # the clamp does not hide the comparison
        assert max(errors.values()) <= TOL, errors


def test_export_round_trip_matches_diffusers_keys():
    torch = pytest.importorskip("torch")
    reference = _diffusers_model(torch, SMALL).state_dict()
    exported = _numpy_state_dict(SMALL)
    assert {k: tuple(v.shape) for k, v in reference.items()} == \
        {k: v.shape for k, v in exported.items()}


def test_mapping_errors_name_the_key():
    good = _numpy_state_dict(SMALL)
    key = "decoder.up_blocks.1.resnets.0.conv1.weight"
    cases = {
        "missing": ({k: v for k, v in good.items() if k != key}, key),
        "unexpected": ({**good, "encoder.extra.weight": good[key]}, "encoder.extra.weight"),
        "shape": ({**good, key: good[key][:, :-1]}, key),
        "dtype": ({**good, key: good[key].astype(np.int32)}, key),
    }
    for name, (state_dict, culprit) in cases.items():
        with pytest.raises((KeyError, ValueError), match=culprit.replace(".", r"\.")):
            wan_vae.load_state_dict(_abstract(SMALL), state_dict)


def test_load_copies_values_and_casts():
    good = _numpy_state_dict(SMALL, seed=1)
    half = {k: v.astype(np.float16) for k, v in good.items()}
    vae = _abstract(SMALL)
    wan_vae.load_state_dict(vae, half)
    kernel = np.asarray(vae.decoder.conv_out.kernel[...])
    assert kernel.dtype == np.float32
    expected = np.transpose(half["decoder.conv_out.weight"], (2, 3, 4, 1, 0))
    np.testing.assert_array_equal(kernel, expected)
    again = wan_vae.export_state_dict(vae)
    for k in ("decoder.mid_block.attentions.0.to_qkv.weight", "encoder.norm_out.gamma"):
        np.testing.assert_array_equal(again[k], half[k].astype(np.float32))


def test_config_from_diffusers():
    cfg = wan_vae.config_from_diffusers({"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4],
                                         "temperal_downsample": [False, True, True],
                                         "latents_mean": [0.0] * 16}, dtype="bfloat16")
    assert cfg == VAEConfig(dtype="bfloat16")
    with pytest.raises(ValueError, match="is_residual"):
        wan_vae.config_from_diffusers({"base_dim": 160, "is_residual": True, "patch_size": 2})
    patched = VAEConfig(base_channels=16, channel_mults=(1, 2, 4), patch_size=2,
                        temporal_downsample=(True, True))
    exported = wan_vae.config_to_diffusers(patched, latent_std=[2.0] * 16)
    assert (exported["in_channels"], exported["patch_size"], exported["latents_std"][0],
            exported["scale_factor_spatial"]) == (12, 2, 2.0, 8)
    assert wan_vae.config_from_diffusers(exported) == patched


def test_load_pretrained_folder(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    weights = _numpy_state_dict(SMALL, seed=2)
    safetensors_numpy.save_file(weights, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(
        {"_class_name": "AutoencoderKLWan", "base_dim": 12, "z_dim": 4, "dim_mult": [1, 2, 2, 2],
         "num_res_blocks": 1, "attn_scales": [], "temperal_downsample": [False, True, True]}))
    vae = wan_vae.load_pretrained(tmp_path)
    assert vae.config == SMALL
    again = wan_vae.export_state_dict(vae)
    assert all(np.array_equal(again[k], v) for k, v in weights.items())
