"""Our TextEncoder against transformers' T5EncoderModel / UMT5EncoderModel (weights moved through
saved safetensors and load_pretrained), and the state-dict mapping's error reporting."""

import json

import numpy as np
import pytest
from flax import nnx

from vidgen.interop import hf_t5
from vidgen.models.text_encoder import TextEncoder

TOL = 1e-5
SMALL = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
             relative_attention_num_buckets=8, relative_attention_max_distance=16,
             feed_forward_proj="gated-gelu", dropout_rate=0.0)


def _hf_model(kind: str):
    """A small transformers T5/UMT5 encoder with every parameter randomised (norms included)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model_cls, config_cls = {"t5": (transformers.T5EncoderModel, transformers.T5Config),
                             "umt5": (transformers.UMT5EncoderModel, transformers.UMT5Config)}[kind]
    torch.manual_seed(0)
    model = model_cls(config_cls(**SMALL, attn_implementation="eager")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _batch(rng_seed: int = 0, lengths: tuple[int, ...] = (12, 7, 1)):
    """Right-padded ids [B, 12] (pad 0) and mask [B, 12] for rows of the given lengths."""
    ids = np.random.default_rng(rng_seed).integers(3, SMALL["vocab_size"], (len(lengths), 12))
    mask = np.arange(12)[None, :] < np.array(lengths)[:, None]
    return np.where(mask, ids, 0).astype(np.int32), mask


@pytest.mark.parametrize("kind", ["t5", "umt5"])
def test_parity_with_transformers(kind, tmp_path):
    torch = pytest.importorskip("torch")
    model = _hf_model(kind)
    model.save_pretrained(tmp_path, max_shard_size="20KB")     # several shards + index json
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    ours = hf_t5.load_pretrained(tmp_path)
    assert ours.config.per_layer_position_bias == (kind == "umt5")
    ids, mask = _batch()
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids).long(),
                     attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
    got = np.asarray(ours(ids, mask))
    err = np.abs(got - want)[mask].max()            # real tokens; transformers leaves pads live
    print(f"{kind}: max abs error vs transformers {err:.2e} (|out| max {np.abs(want).max():.2f})")
    assert err <= TOL
    assert np.all(got[~mask] == 0.0)


def test_embedding_alias_and_torch_state_dict():
    model = _hf_model("t5")
    state = model.state_dict()                      # holds shared.weight and its tied alias
    config = hf_t5.config_from_hf(model.config.to_dict())
    abstract = lambda: nnx.eval_shape(lambda: TextEncoder(config, rngs=nnx.Rngs(0)))
    with nnx.use_eager_sharding(False):
        both, alias_only = abstract(), abstract()
    hf_t5.load_state_dict(both, state)
    hf_t5.load_state_dict(alias_only, {k: v for k, v in state.items() if k != "shared.weight"})
    want = state["shared.weight"].numpy()
    np.testing.assert_array_equal(np.asarray(both.embedding[...]), want)
    np.testing.assert_array_equal(np.asarray(alias_only.embedding[...]), want)


def _numpy_state(kind: str) -> tuple[dict, dict[str, np.ndarray]]:
    model = _hf_model(kind)
    return model.config.to_dict(), {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("edit, key, message", [
    (lambda s: s.pop("encoder.block.1.layer.0.SelfAttention.k.weight"),
     "encoder.block.1.layer.0.SelfAttention.k.weight", "missing"),
    (lambda s: s.update({"encoder.block.0.layer.1.DenseReluDense.wo.weight": np.zeros((32, 40))}),
     "encoder.block.0.layer.1.DenseReluDense.wo.weight", "shape"),
    (lambda s: s.update({"encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight":
                         np.zeros((8, 4))}),
     "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight", "unexpected"),
    (lambda s: s.update({"encoder.final_layer_norm.weight": np.ones(32, np.int32)}),
     "encoder.final_layer_norm.weight", "dtype"),
])
def test_bad_state_dict_names_the_key(edit, key, message):
    config, state = _numpy_state("t5")              # T5: no position bias in layer 1
    edit(state)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(
            lambda: TextEncoder(hf_t5.config_from_hf(config), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=message) as info:
        hf_t5.load_state_dict(model, state)
    assert key in str(info.value)


def test_load_pretrained_reads_loose_files_and_skips_decoder(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    config, state = _numpy_state("umt5")
    state.pop("encoder.embed_tokens.weight")
    keys = sorted(state)
    both, half = tmp_path / "both", tmp_path / "half"      # *.safetensors without an index
    for folder in (both, half):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        safetensors_numpy.save_file({k: state[k] for k in keys[:10]}, str(folder / "a.safetensors"))
    safetensors_numpy.save_file({**{k: state[k] for k in keys[10:]},
                                 "decoder.final_layer_norm.weight": np.ones(32, np.float32)},
                                str(both / "b.safetensors"))
    ours = hf_t5.load_pretrained(both, param_dtype="bfloat16")
    assert ours.layers[1].q[...].dtype == np.dtype("bfloat16")
    np.testing.assert_allclose(
        np.asarray(ours.layers[1].wo[...], np.float32),
        state["encoder.block.1.layer.1.DenseReluDense.wo.weight"].T, rtol=1e-2)
    with pytest.raises(ValueError, match=r"missing key.*encoder\.block\.1\.layer\.0\.SelfAtt"):
        hf_t5.load_pretrained(half)                     # the other half is missing


@pytest.mark.parametrize("change, message", [
    ({"feed_forward_proj": "relu"}, "feed_forward_proj"),
    ({"model_type": "bert"}, "model_type"),
])
def test_config_from_hf_rejects_other_models(change, message):
    config = {"model_type": "t5", **SMALL, **change}
    with pytest.raises(ValueError, match=message):
        hf_t5.config_from_hf(config)
