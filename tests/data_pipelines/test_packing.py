"""data_pipelines.packing: the token layout against the DiT's patchify, packed rows that hold
every clip once with its own caption, exact resume, and, through the DiT and the dit task's
loss, that packing never lets two clips' tokens meet (packed = each clip alone)."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipelines import packing, shards
from launch.configs import dit_tiny
from vidgen.diffusion import flow
from vidgen.models import dit as dit_lib
from vidgen.models import rope
from vidgen.train.tasks import dit as task

PATCH = (1, 2, 2)
# Latent shapes [t, h, w, C] (bucket-shaped: sides divide by the patch) -> 6 and 4 tokens: rows
# of 20 tokens take 3 clips each, always with some padding. Two shapes: two compiles.
SHAPES = [(3, 2, 4, 4), (1, 4, 4, 4)] * 3
SEQ_LEN, MAX_CLIPS, TEXT_LEN = 20, 3, 5


def _latents(i: int) -> np.ndarray:
    return np.random.default_rng(i).normal(size=SHAPES[i]).astype(np.float32)


def _text(meta: dict) -> dict[str, np.ndarray]:
    """A stand-in tokenizer: the clip's index, then 2 + its length, as ids (vocab < 64)."""
    i = meta["index"]
    ids = np.zeros(TEXT_LEN, np.int32)
    ids[:2 + i % 3] = [10 + i] + [2 + i % 3] * (1 + i % 3)
    return {"text_ids": ids, "text_mask": ids > 0}


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> list[str]:
    records = [({"index": i}, shards.array_to_bytes(_latents(i))) for i in range(len(SHAPES))]
    return shards.write_shards(records, str(tmp_path_factory.mktemp("latents")), "train", 2)


def _packed(paths, **overrides) -> grain.IterDataset:
    kwargs = dict(seq_len=SEQ_LEN, max_clips=MAX_CLIPS, patch=PATCH, batch_size=2, seed=3,
                  text_fn=_text, shard=grain.sharding.ShardOptions(0, 1)) | overrides
    return packing.make_packed_latent_dataset(paths, **kwargs)


def test_latent_tokens_are_the_dits_patchify_and_grid():
    odd = np.random.default_rng(9).normal(size=(1, 3, 5, 4)).astype(np.float32)  # zero-padded
    for latents in (_latents(0), odd):
        tokens, positions = packing.latent_tokens(latents, PATCH)
        want, grid = dit_lib.patchify(jnp.asarray(latents)[None], PATCH)
        np.testing.assert_array_equal(tokens, np.asarray(want[0]))
        np.testing.assert_array_equal(positions, np.asarray(rope.grid_positions(1, *grid)[0]))


def _segments(batch: dict) -> list[tuple[int, int, int]]:
    """(row, segment id, clip index) of every clip in a batch, checking its tokens, positions
    and caption against the clip's own."""
    found = []
    for row in range(batch["tokens"].shape[0]):
        for seg in np.unique(batch["segment_ids"][row]):
            if seg == 0:
                continue
            where = batch["segment_ids"][row] == seg
            assert np.all(np.diff(np.flatnonzero(where)) == 1)      # one contiguous run
            i = int(batch["text_ids"][row, seg - 1, 0]) - 10
            tokens, positions = packing.latent_tokens(_latents(i), PATCH)
            np.testing.assert_array_equal(batch["tokens"][row][where], tokens)
            np.testing.assert_array_equal(batch["positions"][row][where], positions)
            np.testing.assert_array_equal(batch["text_ids"][row, seg - 1],
                                          _text({"index": i})["text_ids"])
            assert batch["text_segment_ids"][row, seg - 1] == seg
            found.append((row, int(seg), i))
    return found


def test_rows_hold_every_clip_once_with_its_own_tokens_and_caption(paths):
    batches = list(_packed(paths, batch_size=1, num_epochs=1))
    clips = [i for b in batches for _, _, i in _segments(b)]
    assert sorted(clips) == list(range(len(SHAPES)))
    for b in batches:
        assert b["tokens"].shape == (1, SEQ_LEN, 16) and b["text_ids"].shape == (1, 3, 5)
        assert np.all(b["tokens"][b["segment_ids"] == 0] == 0)
        assert (b["text_segment_ids"] > 0).sum() == len(np.unique(b["segment_ids"][b[
            "segment_ids"] > 0]))
    real = sum(int((b["segment_ids"] > 0).sum()) for b in batches)
    assert real == 3 * (6 + 4)
    print(f"padding share over the epoch: {1 - real / (len(batches) * SEQ_LEN):.1%}")


def test_packed_resume_and_grain_checkpoint_check(paths):
    grain.experimental.assert_equal_output_after_checkpoint(_packed(paths, num_epochs=2))


TEXT_DIM = 32
EMBED = np.random.default_rng(7).normal(size=(64, TEXT_DIM)).astype(np.float32)


def _model() -> tuple[task.DiTTrainModel, object]:
    """dit_tiny's tiny DiT (4 latent channels) with random parameters filled from NumPy (a real
    init costs dozens of small compiles), and its config with a frozen text encoder: captions
    arrive as features, EMBED[ids], a stand-in encoder."""
    config = dit_tiny.get_config("tiny")
    config.model.update(in_channels=4, out_channels=4, text_dim=TEXT_DIM)
    config.text.trainable, config.flow.text_dropout = False, 0.0
    with nnx.use_eager_sharding(False):
        dit = nnx.eval_shape(lambda: dit_lib.DiT(dit_lib.DiTConfig.from_dict(
            config.model.to_dict()), rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    for path, var in nnx.to_flat_state(nnx.state(dit, nnx.Param)):
        var.set_value(jnp.asarray(0.15 * rng.normal(size=var.shape) + (path[-1] == "scale"),
                                  jnp.float32))
    return task.DiTTrainModel(dit, None), config


@pytest.fixture(scope="module")
def packed_batch(paths) -> dict:
    """Two packed rows with their captions' features, as the dit task's prepare_batch leaves
    them for a frozen text encoder."""
    batch = next(iter(_packed(paths, batch_size=2)))
    assert (batch["segment_ids"] == 0).any() and (batch["text_segment_ids"] > 1).any()
    batch |= {"context": EMBED[batch["text_ids"]], "null_context": EMBED[np.full(TEXT_LEN, 1)],
              "null_mask": np.arange(TEXT_LEN) == 0}
    return jax.tree.map(jnp.asarray, batch)


@nnx.jit
def _velocity(dit, x: jax.Array, t: jax.Array, context: jax.Array, mask: jax.Array
              ) -> jax.Array:
    """Unpacked: latents x [1, t, h, w, C] at time t [1] with caption features, mask."""
    return dit(x, t, context, mask)


@nnx.jit
def _packed_velocity(dit, b: dict, t: jax.Array) -> jax.Array:
    """Packed rows b at per-segment times t [B, S], each slot's caption its segment's."""
    rows, slots, lt = b["text_ids"].shape
    return dit(b["tokens"], t, b["context"].reshape(rows, slots * lt, -1),
               b["text_mask"].reshape(rows, -1), segment_ids=b["segment_ids"],
               positions=b["positions"],
               context_segment_ids=jnp.repeat(b["text_segment_ids"], lt, axis=1))


def _untokens(tokens: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Tokens [n, pt*ph*pw*C] of one clip back to its latents [t, h, w, C]."""
    (t, h, w, c), (pt, ph, pw) = shape, PATCH
    x = np.asarray(tokens).reshape(t // pt, h // ph, w // pw, pt, ph, pw, c)
    return x.transpose(0, 3, 1, 4, 2, 5, 6).reshape(shape)


def _alone(model, batch, row: int, seg: int, x_tokens: np.ndarray, t: jax.Array) -> np.ndarray:
    """The DiT's velocity [t, h, w, C] for one clip of a packed batch run on its own (unpacked,
    its own caption), from its input tokens x_tokens [n, F]."""
    shape = SHAPES[int(batch["text_ids"][row, seg - 1, 0]) - 10]
    v = _velocity(model.dit, jnp.asarray(_untokens(x_tokens, shape))[None], t[None],
                  batch["context"][row, seg - 1][None], batch["text_mask"][row, seg - 1][None])
    return np.asarray(v[0])


def test_packed_dit_with_per_segment_times_equals_each_clip_alone(packed_batch):
    model, _ = _model()
    b = packed_batch
    t = jnp.asarray([[0.2, 0.7, 0.5], [0.9, 0.4, 0.1]])            # one time per segment
    v = _packed_velocity(model.dit, b, t)
    errs = []
    for row, seg, i in _segments(jax.tree.map(np.asarray, b)):
        where = np.asarray(b["segment_ids"][row] == seg)
        alone = _alone(model, b, row, seg, np.asarray(b["tokens"][row])[where], t[row, seg - 1])
        errs.append(float(np.abs(_untokens(np.asarray(v[row])[where], SHAPES[i]) - alone).max()))
    print(f"packed vs alone, {len(errs)} clips: max abs err {max(errs):.1e}")
    assert max(errs) <= 1e-5 and float(jnp.abs(v).max()) > 1e-2


def test_packed_loss_is_the_real_token_mse_of_each_clip_alone(packed_batch):
    model, config = _model()
    b, rng = packed_batch, jax.random.key(4)
    loss_fn = nnx.jit(lambda m, batch: task.loss_fn(m, batch, rng, jnp.int32(0), config))
    loss, metrics = loss_fn(model, b)
    # The loss's draws, then each clip through the DiT on its own, summed in float64 NumPy.
    fcfg = flow.FlowConfig.from_dict(config.flow.to_dict())
    rng_t, rng_n, _ = jax.random.split(rng, 3)
    rows, slots = b["text_segment_ids"].shape
    sizes = jnp.stack([jnp.sum(b["segment_ids"] == s, axis=1) for s in range(1, slots + 1)], 1)
    t = flow.sample_timesteps(rng_t, rows * slots, sizes.reshape(-1), fcfg).reshape(rows, slots)
    noise = jax.random.normal(rng_n, b["tokens"].shape, jnp.float32)
    total, count = 0.0, 0
    for row, seg, i in _segments(jax.tree.map(np.asarray, b)):
        where = np.asarray(b["segment_ids"][row] == seg)
        x0, eps = np.asarray(b["tokens"][row], np.float64)[where], np.asarray(noise[row])[where]
        tj = float(t[row, seg - 1])
        x_t = ((1 - tj) * x0 + tj * eps).astype(np.float32)
        v = np.asarray(_alone(model, b, row, seg, x_t, t[row, seg - 1]), np.float64)
        total += np.sum((v - _untokens(eps - x0, SHAPES[i])) ** 2)
        count += x0.size
    print(f"packed loss {float(loss):.6f}, per-clip reference {total / count:.6f}")
    np.testing.assert_allclose(float(loss), total / count, rtol=2e-5)
    np.testing.assert_allclose(float(metrics["real_tokens"]),
                               float(jnp.mean(b["segment_ids"] > 0)))
    moved = dict(b, tokens=jnp.where(b["segment_ids"][..., None] == 0, 50.0, b["tokens"]))
    assert float(loss_fn(model, moved)[0]) == float(loss)
