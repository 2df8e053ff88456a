"""Our DiT against diffusers' WanTransformer3DModel (the published Wan 2.1 DiT implementation) in
both directions of the weight mapping, and the mapping's error reporting."""

import dataclasses
import json

import numpy as np
import pytest
from flax import nnx

from vidgen.interop import wan_dit
from vidgen.models.dit import DiT, DiTConfig

SMALL = DiTConfig(in_channels=4, out_channels=4, hidden_dim=48, num_layers=2, num_heads=4,
                  mlp_dim=64, text_dim=32)
TOL = 1e-4


def _abstract(cfg: DiTConfig) -> DiT:
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0)))


def _random_ours(cfg: DiTConfig, seed: int) -> DiT:
    """Our DiT at its init plus noise on every parameter (the zero-initialised output too)."""
    with nnx.use_eager_sharding(False):
        model = DiT(cfg, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        var.set_value(var.get_value() + 0.1 * rng.normal(size=var.shape).astype(np.float32))
    return model


def _diffusers_model(torch, cfg: DiTConfig):
    """A diffusers WanTransformer3DModel for cfg with every parameter randomised."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim, in_channels=cfg.in_channels,
        out_channels=cfg.out_channels, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.mlp_dim, num_layers=cfg.num_layers, cross_attn_norm=cfg.cross_attn_norm,
        eps=cfg.eps).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _inputs(cfg: DiTConfig, shape: tuple[int, ...], seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)                  # [B, T, H, W, C]
    t = rng.uniform(size=(shape[0],)).astype(np.float32)
    context = rng.normal(size=(shape[0], 7, cfg.text_dim)).astype(np.float32)
    return x, t, context


def _reference(torch, model, x, t, context) -> np.ndarray:
    """diffusers' velocity in our channels-last layout (timestep = t * 1000, as ours)."""
    with torch.no_grad():
        out = model(torch.from_numpy(x).permute(0, 4, 1, 2, 3), torch.from_numpy(t) * 1000.0,
                    torch.from_numpy(context), return_dict=False)[0]
    return out.permute(0, 2, 3, 4, 1).numpy()


def _ours(model: DiT, x, t, context, mask) -> np.ndarray:
    return np.asarray(nnx.jit(lambda m, *a: m(*a))(model, x, t, context, mask))


def test_diffusers_weights_into_ours():
    torch = pytest.importorskip("torch")
    reference = _diffusers_model(torch, SMALL)
    cfg = wan_dit.config_from_diffusers(dict(reference.config))
    assert cfg == SMALL
    model = _abstract(cfg)
    wan_dit.load_state_dict(model, reference.state_dict())      # torch tensors as they are
    x, t, context = _inputs(cfg, (2, 3, 4, 6, 4), seed=0)       # 3 x 2 x 3 non-square patches
    expected = _reference(torch, reference, x, t, context)
    ours = _ours(model, x, t, context, np.ones(context.shape[:2], bool))
    err = np.abs(ours - expected).max()
    print(f"diffusers -> ours: max abs err {err:.2e} (output scale {np.abs(expected).max():.2f})")
    assert ours.shape == x.shape and err <= TOL


def test_our_weights_into_diffusers():
    torch = pytest.importorskip("torch")
    cfg = dataclasses.replace(SMALL, patch_size=(2, 2, 2), out_channels=3)
    model = _random_ours(cfg, seed=1)
    exported = wan_dit.export_state_dict(model)
    reference = _diffusers_model(torch, cfg)
    expected_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in exported.items()} == expected_shapes
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    x, t, context = _inputs(cfg, (1, 4, 6, 4, 4), seed=2)
    expected = _reference(torch, reference, x, t, context)
    ours = _ours(model, x, t, context, None)                    # no mask: Wan attends to all
    err = np.abs(ours - expected).max()
    print(f"ours -> diffusers: max abs err {err:.2e} (output scale {np.abs(expected).max():.2f})")
    assert ours.shape == x.shape[:-1] + (3,) and err <= TOL


def test_mapping_errors_name_the_key():
    good = wan_dit.export_state_dict(_random_ours(SMALL, seed=3))
    key = "blocks.1.attn2.to_out.0.weight"
    cases = {
        "missing": ({k: v for k, v in good.items() if k != key}, key),
        "unexpected": ({**good, "blocks.2.attn1.to_q.weight": good[key]},
                       "blocks.2.attn1.to_q.weight"),
        "shape": ({**good, key: good[key][:, :-1]}, key),
        "dtype": ({**good, key: good[key].astype(np.int32)}, key),
    }
    for name, (state_dict, culprit) in cases.items():
        with pytest.raises(ValueError, match=culprit.replace(".", r"\.")):
            wan_dit.load_state_dict(_abstract(SMALL), state_dict)


def test_load_copies_values_and_round_trips():
    good = wan_dit.export_state_dict(_random_ours(SMALL, seed=4))
    model = _abstract(SMALL)
    wan_dit.load_state_dict(model, {k: v.astype(np.float16) for k, v in good.items()})
    q = np.asarray(model.blocks.attn1.to_q.kernel[...])              # [layers, D, H, K]
    assert q.dtype == np.float32
    np.testing.assert_array_equal(
        q[1].reshape(48, 48), good["blocks.1.attn1.to_q.weight"].astype(np.float16).T)
    wan_dit.load_state_dict(model, good)
    again = wan_dit.export_state_dict(model)
    assert all(np.array_equal(again[k], v) for k, v in good.items())


def test_config_from_diffusers():
    wan_1b3 = {"_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2],
               "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
               "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960,
               "num_layers": 30, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
               "eps": 1e-6, "image_dim": None, "added_kv_proj_dim": None,
               "rope_max_seq_len": 1024}
    assert wan_dit.config_from_diffusers(wan_1b3, dtype="bfloat16") == DiTConfig(dtype="bfloat16")
    with pytest.raises(ValueError, match="image_dim"):
        wan_dit.config_from_diffusers({**wan_1b3, "image_dim": 1280})
    exported = wan_dit.config_to_diffusers(DiTConfig())
    assert {k: exported[k] for k in wan_1b3} == wan_1b3
    assert wan_dit.config_from_diffusers(exported) == DiTConfig()
    with pytest.raises(ValueError, match="rope_theta"):
        wan_dit.config_to_diffusers(DiTConfig(rope_theta=500.0))


def test_load_pretrained_folder(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    weights = wan_dit.export_state_dict(_random_ours(SMALL, seed=5))
    safetensors_numpy.save_file(weights, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(
        {"_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2],
         "num_attention_heads": 4, "attention_head_dim": 12, "in_channels": 4,
         "out_channels": 4, "text_dim": 32, "ffn_dim": 64, "num_layers": 2}))
    model = wan_dit.load_pretrained(tmp_path)
    assert model.config == SMALL
    again = wan_dit.export_state_dict(model)
    assert all(np.array_equal(again[k], v) for k, v in weights.items())
