"""The T5-style TextEncoder (position buckets, padding, sharding names, dtypes) and the Tokenizer.
Parity with transformers' T5/UMT5 encoders is in tests/interop/test_hf_t5.py."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipelines.train_tokenizer import train_tokenizer
from vidgen.models.text_encoder import (TextEncoder, TextEncoderConfig, Tokenizer,
                                        relative_position_buckets)

TINY = TextEncoderConfig(vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4,
                         relative_attention_num_buckets=8, relative_attention_max_distance=16,
                         per_layer_position_bias=False)


def _model(config: TextEncoderConfig = TINY, *, seed: int | None = None) -> TextEncoder:
    """The model config builds (logical names, no mesh): its own initialisation, or with seed,
    an abstract one filled with NumPy normals (norm scales around 1), skipping per-shape compiles
    of the random initialisers."""
    with nnx.use_eager_sharding(False):
        if seed is None:
            return TextEncoder(config, rngs=nnx.Rngs(0))
        model = nnx.eval_shape(lambda: TextEncoder(config, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    params = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(params):
        value = rng.normal(1.0 if path[-1] == "scale" else 0.0, 0.3, var.shape)
        var.set_value(jnp.asarray(value, var.dtype))
    nnx.update(model, params)
    return model


@nnx.jit
def _encode(model: TextEncoder, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return model(ids, mask)


@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 16), (16, 20)])
def test_position_buckets_match_transformers(num_buckets, max_distance):
    torch = pytest.importorskip("torch")
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    length = 300
    offsets = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    want = t5.T5Attention._relative_position_bucket(offsets, bidirectional=True,
                                                    num_buckets=num_buckets,
                                                    max_distance=max_distance).numpy()
    got = relative_position_buckets(length, num_buckets, max_distance)
    np.testing.assert_array_equal(got, want)
    assert got.min() == 0 and got.max() == num_buckets - 1


def test_padding_changes_nothing_and_pads_are_zero():
    """Real tokens of a padded row equal the unpadded sequence's outputs; pads give zeros."""
    model = _model(dataclasses.replace(TINY, per_layer_position_bias=True))
    ids = np.random.default_rng(0).integers(3, 50, (1, 6)).astype(np.int32)
    alone = np.asarray(_encode(model, ids, np.ones((1, 6), bool)))
    padded_ids = np.concatenate([ids, np.zeros((1, 4), np.int32)], axis=1)
    padded = np.asarray(_encode(model, padded_ids, np.arange(10)[None] < 6))
    err = np.abs(padded[:, :6] - alone).max()
    print(f"padded vs unpadded max abs difference {err:.2e}")
    assert err <= 1e-5
    assert np.all(padded[:, 6:] == 0.0)


def test_parameters_carry_logical_axis_names():
    names = {path: var.get_metadata().get("out_sharding")
             for path, var in nnx.to_flat_state(nnx.state(_model(seed=0), nnx.Param))}
    assert names[("embedding",)] == ("vocab", "embed")
    assert names[("layers", 0, "q")] == ("embed", "heads", "kv")
    assert names[("layers", 1, "o")] == ("heads", "kv", "embed")
    assert names[("layers", 0, "wi_0")] == ("embed", "mlp")
    assert names[("layers", 0, "wo")] == ("mlp", "embed")
    assert names[("layers", 0, "relative_bias")] == (None, "heads")
    assert ("layers", 1, "relative_bias") not in names          # T5: layer 0 only


def test_bfloat16_compute_is_close_to_float32():
    ids = np.random.default_rng(1).integers(3, 50, (2, 8)).astype(np.int32)
    mask = np.ones((2, 8), bool)
    full = np.asarray(_encode(_model(seed=1), ids, mask))
    half = _encode(_model(dataclasses.replace(TINY, dtype="bfloat16"), seed=1), ids, mask)
    assert half.dtype == jnp.bfloat16
    assert np.abs(np.asarray(half, np.float32) - full).max() < 0.1 * np.abs(full).max()


def test_config_from_dict_names_unknown_keys():
    with pytest.raises(ValueError, match="d_mdoel"):
        TextEncoderConfig.from_dict({"d_mdoel": 8})
    with pytest.raises(ValueError, match="num_heads"):
        TextEncoderConfig(num_heads=0)


@pytest.fixture(scope="module")
def tokenizer_model(tmp_path_factory) -> str:
    """A sentencepiece model trained on a few dozen generated captions."""
    rng = np.random.default_rng(0)
    colours, shapes = ["red", "blue", "green", "yellow"], ["ball", "square", "star", "ring"]
    path = tmp_path_factory.mktemp("tok") / "captions.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(40):
            colour, shape = rng.choice(colours), rng.choice(shapes)
            caption = f"A {colour} {shape} moves {rng.choice(['left', 'right'])} slowly."
            f.write(json.dumps({"caption": caption, "short_caption": f"a {colour} {shape}",
                                "split": "train"}) + "\n")
    return train_tokenizer(str(path), str(path.parent / "tok"), vocab_size=60)


def test_tokenizer_round_trips_pads_and_masks(tokenizer_model):
    tok = Tokenizer(tokenizer_model, max_length=12)
    texts = ["a red ball", "A blue star moves left slowly.", ""]
    ids, mask = tok(texts)
    assert ids.shape == mask.shape == (3, 12) and ids.dtype == np.int32 and mask.dtype == bool
    assert tok.decode(ids) == texts
    for row, text in zip(range(3), texts):
        n = len(tok.processor.encode(text)) + 1                  # pieces + EOS
        assert mask[row].tolist() == [True] * n + [False] * (12 - n)
        assert ids[row, n - 1] == tok.eos_id == Tokenizer.EOS_ID == 1
        assert np.all(ids[row, n:] == Tokenizer.PAD_ID) and Tokenizer.PAD_ID == 0
        assert np.all(ids[row, :n - 1] > 2)                          # no pad/eos/unk inside


def test_tokenizer_truncates_keeping_eos(tokenizer_model):
    tok = Tokenizer(tokenizer_model, max_length=4)
    long_text = "a green ring moves right slowly and a yellow square moves left"
    ids, mask = tok([long_text])
    pieces = tok.processor.encode(long_text)
    assert len(pieces) > 4
    assert ids[0].tolist() == pieces[:3] + [tok.eos_id] and mask.all()
    with pytest.raises(TypeError):
        tok(long_text)


def test_tokenizer_rejects_non_t5_special_ids(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["a red ball", "a blue star"] * 20),
                                   model_prefix=str(tmp_path / "plain"), vocab_size=20,
                                   hard_vocab_limit=False, minloglevel=2)   # unk 0, bos 1, eos 2
    with pytest.raises(ValueError, match="pad id -1 and eos id 2"):
        Tokenizer(str(tmp_path / "plain.model"), max_length=8)
