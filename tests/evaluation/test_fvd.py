"""FVD (vidgen/evaluation/fvd.py): the Frechet distance against analytic values and SciPy in
float64; the I3D network and weight loader against the PyTorch port cd-fvd ships (random
weights saved as a real state dict); the fallback features and temporal consistency against
direct NumPy loops."""

import contextlib

import jax
import numpy as np
import pytest
import scipy.linalg
import torch
from flax import nnx

from vidgen.evaluation import clip_stats, fvd, i3d


def _features(seed: int, n: int, d: int, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) @ mix * scale + rng.normal(size=d)).astype(np.float32)


def _reference(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook formula with scipy's general matrix square root of S1 S2, float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2)
    diff = x.mean(0) - y.mean(0)
    return float(diff @ diff + np.trace(s1 + s2 - 2 * np.real(root)))


def test_identical_sets_give_zero():
    x = _features(0, 200, 24)
    value = fvd.fvd(x, x)
    print(f"FVD(x, x) = {value:.2e}")
    assert abs(value) < 1e-9


def test_shift_gives_its_squared_length():
    x = _features(1, 150, 16)
    shift = np.random.default_rng(2).normal(size=16)
    value = fvd.fvd(x, x + shift.astype(np.float32))
    want = float((shift.astype(np.float32).astype(np.float64) ** 2).sum())
    print(f"FVD(x, x + c) = {value:.10f}, |c|^2 = {want:.10f}")
    assert value == pytest.approx(want, rel=1e-6)


def test_matches_scipy_on_random_gaussians():
    x, y = _features(3, 300, 32), _features(4, 250, 32, scale=1.7)
    value, want = fvd.fvd(x, y), _reference(x, y)
    print(f"FVD {value:.10f} vs scipy {want:.10f}: rel {abs(value - want) / want:.1e}")
    assert value == pytest.approx(want, rel=1e-9)
    mu, sigma = fvd.gaussian_stats(x)
    assert mu.dtype == sigma.dtype == np.float64


def test_rank_deficient_covariances_match_the_eigenvalue_formula():
    """Fewer clips than dimensions (a sweep cell): tr sqrt(S1 S2) = sum sqrt(eig(S1 S2))."""
    x, y = _features(5, 10, 40), _features(6, 12, 40)
    s1, s2 = np.cov(x.astype(np.float64), rowvar=False), np.cov(y.astype(np.float64),
                                                                rowvar=False)
    cross = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    diff = x.mean(0, dtype=np.float64) - y.mean(0, dtype=np.float64)
    want = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * cross
    assert fvd.fvd(x, y) == pytest.approx(want, rel=1e-7)


def test_fallback_features_match_a_loop():
    rng = np.random.default_rng(7)
    videos = rng.integers(0, 256, (2, 3, 10, 13, 3), dtype=np.uint8)
    got = clip_stats.pixel_motion_features(videos)
    x = videos.astype(np.float64) / 255
    rows = np.linspace(0, 10, 5).round().astype(int)
    cols = np.linspace(0, 13, 5).round().astype(int)
    for b in range(2):
        cells = np.zeros((3, 4, 4, 3))
        change = np.zeros((4, 4))
        for i in range(4):
            for j in range(4):
                block = x[b, :, rows[i]:rows[i + 1], cols[j]:cols[j + 1]]
                cells[:, i, j] = block.mean(axis=(1, 2))
                change[i, j] = np.abs(np.diff(block, axis=0)).mean()
        want = np.concatenate([cells.mean(0).ravel(), cells.std(0).ravel(), change.ravel()])
        np.testing.assert_allclose(got[b], want, atol=1e-6)
    assert got.shape == (2, clip_stats.NUM_FEATURES)


def test_temporal_consistency():
    still = np.full((1, 4, 8, 8, 3), 90, np.uint8)
    flicker = np.zeros((1, 4, 8, 8, 3), np.uint8)
    flicker[:, 1::2] = 255
    noise = np.random.default_rng(8).integers(0, 256, (1, 5, 8, 8, 3), dtype=np.uint8)
    want = 1 - np.mean([np.abs(noise[0, t + 1] / 255 - noise[0, t] / 255).mean()
                        for t in range(4)])
    got = clip_stats.temporal_consistency(np.concatenate([still[:, :4], flicker, noise[:, :4]]))
    np.testing.assert_allclose(got[:2], [1.0, 0.0])
    np.testing.assert_allclose(clip_stats.temporal_consistency(noise), [want], rtol=1e-6)
    assert np.isnan(clip_stats.temporal_consistency(still[:, :1])).all()


@contextlib.contextmanager
def _one_torch_thread():
    """Tiny PyTorch ops run ~6x faster on one thread than on two when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def torch_i3d(tmp_path_factory):
    """cd-fvd's PyTorch I3D with random weights and batch-norm statistics (those of a batch,
    so activations keep unit scale through the 60 layers), saved as a state-dict file the way
    published checkpoints are; with its Mixed_5c features of that input and its logits of
    random Mixed_5c features."""
    from cdfvd.third_party.i3d.pytorch_i3d import InceptionI3d
    torch.manual_seed(0)
    model = InceptionI3d(400, in_channels=3)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.reset_running_stats()
            module.momentum = None                  # running stats = the batch's
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
    x = torch.rand(3, 3, 9, 32, 32) * 2 - 1         # [B, C, T, H, W]
    pooled = torch.randn(1, 1024, 2, 7, 7)
    with torch.no_grad(), _one_torch_thread():
        model.train()
        model.extract_pre_pool_features(x[1:])
        model.eval()
        x = x[:1]
        features = model.extract_pre_pool_features(x)
        logits = model.logits(model.avg_pool(pooled)).squeeze(3).squeeze(3).mean(2)
    path = tmp_path_factory.mktemp("i3d") / "i3d.pt"
    torch.save(model.state_dict(), path)
    channels_last = (0, 2, 3, 4, 1)
    return str(path), {"x": x.permute(*channels_last).numpy(), "pooled": pooled.permute(
        *channels_last).numpy(), "features": features.permute(*channels_last).numpy(),
        "logits": logits.numpy()}


def test_i3d_matches_the_pytorch_port(torch_i3d):
    path, want = torch_i3d
    ours = i3d.load_i3d(path)
    graphdef, state = nnx.split(ours)
    # Unoptimised XLA code compiles this 60-convolution network 4x faster, for the same maths.
    features = jax.jit(lambda s, v: nnx.merge(graphdef, s).features(v)).lower(
        state, want["x"]).compile(compiler_options={"xla_backend_optimization_level": 0})
    got = np.asarray(features(state, want["x"]))
    err = np.abs(got - want["features"]).max() / np.abs(want["features"]).max()
    logits = np.asarray(ours.head(want["pooled"]))
    err_logits = np.abs(logits - want["logits"]).max()
    print(f"I3D vs PyTorch port: Mixed_5c rel err {err:.1e}, logits abs err {err_logits:.1e}")
    assert got.shape == want["features"].shape == (1, 2, 1, 1, 1024) and err < 1e-4
    assert logits.shape == (1, 400) and err_logits < 1e-4


def test_i3d_preprocess_matches_the_pytorch_port():
    from cdfvd.third_party.i3d.utils import preprocess_i3d
    videos = np.random.default_rng(10).integers(0, 256, (2, 9, 40, 56, 3), dtype=np.uint8)
    with _one_torch_thread():
        want = preprocess_i3d(videos).permute(0, 2, 3, 4, 1).numpy()
    got = np.asarray(i3d.preprocess(videos))
    print(f"I3D preprocessing vs PyTorch port: max abs err {np.abs(got - want).max():.1e}")
    np.testing.assert_allclose(got, want, atol=1e-5)
    short = np.asarray(i3d.preprocess(videos[:, :5]))
    assert short.shape == (2, i3d.STRETCH_FRAMES, i3d.SIZE, i3d.SIZE, 3)


def test_i3d_loader_names_bad_keys(torch_i3d, tmp_path):
    state = torch.load(torch_i3d[0], weights_only=True)
    np.savez(tmp_path / "ok.npz", **{k: v.numpy() for k, v in state.items()})
    assert isinstance(i3d.load_i3d(str(tmp_path / "ok.npz")), i3d.I3D)
    del state["Mixed_4c.b2b.bn.running_var"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="missing Mixed_4c.b2b.bn.running_var"):
        i3d.load_i3d(str(tmp_path / "missing.pt"))
    state["Mixed_4c.b2b.bn.running_var"] = torch.ones(3)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match="Mixed_4c.b2b.bn.running_var has shape"):
        i3d.load_i3d(str(tmp_path / "shape.pt"))


def test_batched_extraction_pads_to_one_shape():
    shapes = []

    def extract(videos):
        shapes.append(videos.shape[0])
        return clip_stats.pixel_motion_features(videos)

    videos = np.random.default_rng(11).integers(0, 256, (7, 2, 8, 8, 3), dtype=np.uint8)
    got = fvd.batched(extract, 3)(videos)
    np.testing.assert_array_equal(got, clip_stats.pixel_motion_features(videos))
    assert shapes == [3, 3, 3]
