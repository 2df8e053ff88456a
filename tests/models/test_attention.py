"""The attention entry point (vidgen/models/attention.py) against a float64 NumPy softmax
attention and against attending to each packed clip separately; the hand-written backward of the
'blocked' implementation against autodiff of jax.nn.dot_product_attention; the kernel choice per
platform, splash's segment-id encoding of masks, and the splash TPU kernel itself run by Pallas'
interpreter against the float64 reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen.models import attention
from vidgen.models.attention import dot_product_attention


def _qkv(seed: int, b: int, lq: int, lk: int, h: int = 2, k: int = 8):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(b, lq, h, k)).astype(np.float32),
            rng.normal(size=(b, lk, h, k)).astype(np.float32),
            rng.normal(size=(b, lk, h, k)).astype(np.float32))


def _reference(q, k, v, mask):
    """float64 softmax attention; mask [B, H|1, Lq, Lk]; rows with no key get zeros."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    mask = np.broadcast_to(mask, logits.shape)
    logits = np.where(mask, logits, -np.inf)
    top = np.max(np.where(mask, logits, -1e300), axis=-1, keepdims=True)
    weights = np.where(mask, np.exp(logits - top), 0.0)
    total = weights.sum(-1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


def test_segment_ids_equal_separate_clips():
    q, k, v = _qkv(0, 2, 10, 10)
    seg = np.array([[1, 1, 1, 2, 2, 2, 2, 3, 3, 3], [5, 5, 5, 5, 5, 5, 7, 7, 7, 7]], np.int32)
    packed = np.asarray(dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg))
    err = 0.0
    for b in range(2):
        for s in np.unique(seg[b]):
            idx = np.flatnonzero(seg[b] == s)
            alone = dot_product_attention(q[b:b + 1, idx], k[b:b + 1, idx], v[b:b + 1, idx])
            err = max(err, np.abs(packed[b, idx] - np.asarray(alone)[0]).max())
    unmasked = np.asarray(dot_product_attention(q, k, v))
    print(f"packed vs per-clip attention: max abs err {err:.2e}")
    assert err <= 1e-6
    assert np.abs(unmasked - packed).max() > 1e-2      # the segments did change the result


IMPLEMENTATIONS = {"blocked": ("blocked", None), "blocked, blocks of 4": ("blocked", 4),
                   "xla": ("xla", None)}


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_mask_and_segments_match_float64_reference(name, monkeypatch):
    impl, block = IMPLEMENTATIONS[name]
    if block:                         # several query blocks, the last one padded
        monkeypatch.setattr(attention, "QUERY_BLOCK", block)
    q, k, v = _qkv(1, 2, 6, 9)
    rng = np.random.default_rng(2)
    mask = rng.uniform(size=(2, 2, 6, 9)) < 0.6
    mask[0, 1, 3] = False                                # one fully masked query row
    q_seg = np.array([[0, 0, 0, 1, 1, 1], [0, 1, 0, 1, 0, 1]], np.int32)
    kv_seg = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 0, 0]], np.int32)
    cases = {
        "mask": (dict(mask=mask), mask),
        "padding [B,1,1,Lk]": (dict(mask=mask[:, :1, :1]), mask[:, :1, :1]),
        "mask+segments": (dict(mask=mask, q_segment_ids=q_seg, kv_segment_ids=kv_seg),
                          mask & (q_seg[:, None, :, None] == kv_seg[:, None, None, :])),
    }
    for case, (kwargs, full) in cases.items():
        ours = np.asarray(dot_product_attention(q, k, v, implementation=impl, **kwargs))
        err = np.abs(ours - _reference(q, k, v, full)).max()
        print(f"{name} {case}: max abs err vs float64 reference {err:.2e}")
        assert err <= 1e-5, case
    unbatched = dot_product_attention(q[1], k[1], v[1], mask=mask[1], implementation=impl)
    err = np.abs(np.asarray(unbatched) - _reference(q, k, v, mask)[1]).max()
    print(f"{name} unbatched [L, H, K]: max abs err {err:.2e}")
    assert err <= 1e-5


@pytest.mark.parametrize("block", [None, 3])
def test_blocked_backward_matches_autodiff(block, monkeypatch):
    if block:                         # several query blocks, the last one padded
        monkeypatch.setattr(attention, "QUERY_BLOCK", block)
    q, k, v = _qkv(5, 2, 7, 9, h=3)
    rng = np.random.default_rng(6)
    mask = rng.uniform(size=(2, 1, 7, 9)) < 0.7
    mask[1, 0, 4] = False                                # a fully masked query row
    d_out = rng.normal(size=q.shape).astype(np.float32)
    for kwargs in ({}, {"mask": mask}):
        grads = {}
        for impl in ("blocked", "xla"):
            _, vjp = jax.vjp(lambda *a: dot_product_attention(*a, implementation=impl, **kwargs),
                             q, k, v)
            grads[impl] = vjp(d_out)
        err = max(np.abs(np.asarray(a) - np.asarray(b)).max()
                  for a, b in zip(grads["blocked"], grads["xla"]))
        scale = max(np.abs(np.asarray(g)).max() for g in grads["xla"])
        print(f"blocked (blocks of {block or attention.QUERY_BLOCK}) backward vs autodiff of "
              f"jax.nn ({'mask' if kwargs else 'no mask'}): max abs err {err:.2e} (largest "
              f"gradient {scale:.1e})")
        assert err <= 1e-5 * max(scale, 1.0) and scale > 0.1


def test_fully_masked_rows_are_zero_not_nan():
    q, k, v = _qkv(3, 1, 4, 5)
    mask = np.ones((1, 1, 4, 5), bool)
    mask[..., 2, :] = False

    def loss(q, k, v):
        return jnp.sum(dot_product_attention(q, k, v, mask=mask) ** 2)

    out = np.asarray(dot_product_attention(q, k, v, mask=mask))
    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    assert np.all(np.isfinite(out)) and np.all(out[:, 2] == 0)
    assert np.abs(out[:, [0, 1, 3]]).min() > 0
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_rejects_bad_arguments():
    q, k, v = _qkv(4, 1, 3, 3)
    with pytest.raises(ValueError, match="together"):
        dot_product_attention(q, k, v, q_segment_ids=np.zeros((1, 3), np.int32))
    with pytest.raises(ValueError, match="implementation"):
        dot_product_attention(q, k, v, implementation="splash")
    with pytest.raises(ValueError, match="L, H, K"):
        dot_product_attention(q[0, 0], k[0, 0], v[0, 0])


def test_kernel_choice_follows_the_platform():
    f32, bf16 = jnp.float32, jnp.bfloat16
    assert attention.choose(None, f32, "cpu") == "blocked"
    assert attention.choose(None, bf16, "tpu") == "splash"
    assert attention.choose(None, bf16, "gpu") == "cudnn"
    assert attention.choose(None, f32, "gpu") == "xla"         # cuDNN's flash needs 16 bits
    assert attention.choose("xla", bf16, "tpu") == "xla"
    assert attention.platform() == jax.default_backend() == "cpu"
    with pytest.raises(ValueError, match="'splash' is a TPU kernel; this program compiles "
                                         "for 'cpu'"):
        attention.choose("splash", f32, "cpu")


def _splash_case():
    """q [1, 10, 2, 8], k and v [1, 7, 2, 8], key padding and segment ids with a query (the
    last) whose segment has no key."""
    q, k, v = _qkv(7, 1, 10, 7)
    keys = np.array([[[[True, True, False, True, True, True, False]]]])
    q_seg = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 1, 2]], np.int32)
    kv_seg = np.array([[0, 0, 0, 1, 1, 1, 1]], np.int32)
    return q, k, v, keys, q_seg, kv_seg


def test_splash_segment_ids_encode_the_mask():
    q, k, v, keys, q_seg, kv_seg = _splash_case()
    q_ids, kv_ids = attention.splash_segment_ids(keys, q_seg, kv_seg, q.shape, 7)
    want = attention.combined_mask(keys, q_seg, kv_seg)[:, 0]                  # [B, Lq, Lk]
    np.testing.assert_array_equal(q_ids[:, :, None] == kv_ids[:, None, :], want)
    q_ids, kv_ids = attention.splash_segment_ids(keys[0], None, None, q.shape[1:], 7)
    np.testing.assert_array_equal(q_ids[:, None] == kv_ids[None, :],
                                  np.broadcast_to(keys[0, 0], (10, 7)))       # padding only
    with pytest.raises(ValueError, match=r"key-padding masks \[B, 1, 1, Lk\]; got a mask of "
                                         r"shape \(1, 1, 10, 7\)"):
        attention.splash_segment_ids(np.ones((1, 1, 10, 7), bool), None, None, q.shape, 7)


def test_splash_kernel_matches_float64_reference():
    """The TPU kernel run by Pallas' interpreter on the CPU: padding to its 128-blocks, the
    1/sqrt(K) scale, segment ids, key padding and the zeroed keyless query."""
    q, k, v, keys, q_seg, kv_seg = _splash_case()
    ids = attention.splash_segment_ids(keys, q_seg, kv_seg, q.shape, 7)
    out = np.asarray(attention.splash_attention(q, k, v, *ids, interpret=True))
    full = keys & (q_seg[:, None, :, None] == kv_seg[:, None, None, :])
    err = np.abs(out - _reference(q, k, v, full)).max()
    print(f"splash (Pallas interpreter) vs float64 reference: max abs err {err:.2e}")
    assert err <= 1e-5 and np.all(out[0, -1] == 0)


@pytest.mark.parametrize("fused", [False, True])
def test_splash_gradients_match_autodiff_of_the_reference(fused):
    """Splash's backward kernels (separate dq and dkv, or the fused one), run by Pallas'
    interpreter, against autodiff of a float32 softmax attention written out here."""
    q, k, v, keys, q_seg, kv_seg = _splash_case()
    full = jnp.asarray(keys & (q_seg[:, None, :, None] == kv_seg[:, None, None, :]))
    ids = attention.splash_segment_ids(keys, q_seg, kv_seg, q.shape, 7)
    weights = jnp.asarray(np.random.default_rng(3).normal(size=q.shape), jnp.float32)

    def reference(q, k, v):
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
        p = jax.nn.softmax(jnp.where(full, logits, -1e30), axis=-1) * full.any(-1, keepdims=True)
        return jnp.sum(jnp.einsum("bhqk,bkhd->bqhd", p, v) * weights)

    def splash(q, k, v):
        out = attention.splash_attention(q, k, v, *ids, fused_backward=fused, interpret=True)
        return jnp.sum(out * weights)

    want = jax.grad(reference, argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(splash, argnums=(0, 1, 2))(q, k, v)
    errs = [float(jnp.abs(a - b).max()) for a, b in zip(got, want)]
    print(f"splash backward (fused={fused}) vs autodiff: dq, dk, dv max abs err {errs}")
    assert max(errs) <= 1e-5 and min(float(jnp.abs(g).max()) for g in want) > 1e-2


def test_splash_plan_keeps_its_metadata_small_and_its_mask_cheap():
    """Splash's per-call block metadata (query blocks x key blocks) stays within
    SPLASH_METADATA at any length (at 2M tokens 512-token blocks would need 30 MB of the
    TensorCore's 1 MiB scalar memory): key blocks grow first, up to SPLASH_MAX_KEY_BLOCK, then
    the queries split into the fewest chunks; the full mask splash scans is all True, block by
    block, at no cost per element."""
    assert attention.splash_plan(10, 7) == attention.SplashPlan(128, 128, 128)
    assert attention.splash_plan(75_600, 75_600) == attention.SplashPlan(75_776, 512, 512)
    for lq, lk in [(302_400, 302_400), (1_966_560, 1_966_560), (80_000_000, 512)]:
        plan = attention.splash_plan(lq, lk)
        calls = -(-lq // plan.chunk)
        assert plan.chunk % plan.block_q == 0 and plan.block_k % 128 == 0
        assert plan.block_k <= attention.SPLASH_MAX_KEY_BLOCK
        assert plan.chunk // plan.block_q * -(-lk // plan.block_k) <= attention.SPLASH_METADATA
        assert calls == 1 or plan.block_k == attention.SPLASH_MAX_KEY_BLOCK or lk <= plan.block_k
        if calls > 1:         # one chunk fewer would not fit
            fewer = -(-(-(-lq // plan.block_q)) // (calls - 1))
            assert fewer * -(-lk // plan.block_k) > attention.SPLASH_METADATA
    assert attention.splash_plan(1_966_560, 1_966_560) == attention.SplashPlan(68_096, 512, 2048)
    full = attention._full_mask_type()((4096, 1024))
    block = full[1024:3072, 512:1024]
    assert block.shape == (2048, 512) and block.all() and block.any()
    assert np.asarray(block).dtype == bool and np.asarray(block).all()
    with pytest.raises(NotImplementedError):
        full[3]


def test_splash_in_query_chunks_matches_the_reference(monkeypatch):
    """Forced into 3 query chunks of one 128-block each (a tiny metadata budget), splash's
    output and gradients (Pallas interpreter) equal the float64 reference and autodiff of a
    float32 one: the chunks' dk and dv add up."""
    monkeypatch.setattr(attention, "SPLASH_BLOCK", 128)
    monkeypatch.setattr(attention, "SPLASH_METADATA", 2)
    monkeypatch.setattr(attention, "SPLASH_MAX_KEY_BLOCK", 128)
    rng = np.random.default_rng(5)
    q, k, v = (rng.normal(size=(n, 2, 8)).astype(np.float32) for n in (300, 200, 200))
    q_seg = (np.arange(300) >= 140).astype(np.int32)
    kv_seg = (np.arange(200) >= 90).astype(np.int32)
    assert attention.splash_plan(300, 200) == attention.SplashPlan(128, 128, 128)
    full = q_seg[:, None] == kv_seg[None, :]
    weights = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

    def splash(q, k, v):
        out = attention.splash_attention(q, k, v, q_seg, kv_seg, interpret=True)
        return jnp.sum(out * weights), out

    def reference(q, k, v):
        logits = jnp.einsum("qhd,khd->hqk", q, k) / np.sqrt(q.shape[-1])
        p = jax.nn.softmax(jnp.where(full, logits, -1e30), axis=-1)
        return jnp.sum(jnp.einsum("hqk,khd->qhd", p, v) * weights)

    (_, out), got = jax.value_and_grad(splash, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    want = jax.grad(reference, argnums=(0, 1, 2))(q, k, v)
    err = np.abs(np.asarray(out) - _reference(q[None], k[None], v[None], full[None, None])[0]).max()
    grad_errs = [float(jnp.abs(a - b).max()) for a, b in zip(got, want)]
    print(f"splash in 3 query chunks: output err {err:.1e}, dq/dk/dv errs {grad_errs}")
    assert err <= 1e-5 and max(grad_errs) <= 1e-5
