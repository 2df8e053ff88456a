"""The 3D patch discriminator against a PyTorch re-implementation, its patch grid, and hinge losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidgen.models.discriminator import PatchDiscriminator3D, hinge_d_loss, hinge_g_loss


@pytest.mark.parametrize("shape,grid", [((1, 9, 32, 32, 3), (3, 4, 4)),
                                        ((1, 1, 16, 24, 3), (1, 2, 3)),
                                        ((1, 5, 8, 8, 3), (2, 1, 1))])
def test_patch_grid(shape, grid):
    disc = PatchDiscriminator3D(8, 3, rngs=nnx.Rngs(0))
    assert disc(jnp.zeros(shape)).shape == (shape[0],) + grid + (1,)


def _torch_same_pad(torch, x, kernel, strides):
    """TensorFlow/XLA 'SAME' padding (extra pad at the end) for an NCDHW tensor."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(strides)):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return torch.nn.functional.pad(x, pads)


def test_matches_torch_reference():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    disc = PatchDiscriminator3D(8, 2, rngs=nnx.Rngs(1))
    video = jax.random.uniform(jax.random.key(0), (2, 5, 16, 16, 3), minval=-1, maxval=1)

    def t(a):   # jax -> torch float64
        return torch.from_numpy(np.asarray(a, np.float64))

    def conv(x, layer, strides):
        w = t(layer.kernel[...]).permute(4, 3, 0, 1, 2)          # DHWIO -> OIDHW
        b = t(layer.bias[...]) if layer.bias is not None else None
        return F.conv3d(_torch_same_pad(torch, x, w.shape[2:], strides), w, b, stride=strides)

    x = t(video).permute(0, 4, 1, 2, 3)
    x = F.leaky_relu(conv(x, disc.stem, (1, 2, 2)), 0.2)
    strides = [(2, 2, 2)] * (disc.num_layers - 1) + [(1, 1, 1)]
    for layer, norm, s in zip(disc.convs, disc.norms, strides):
        x = conv(x, layer, s)
        x = F.group_norm(x, norm.num_groups, t(norm.scale[...]), t(norm.bias[...]), eps=1e-6)
        x = F.leaky_relu(x, 0.2)
    want = conv(x, disc.head, (1, 1, 1)).permute(0, 2, 3, 4, 1).numpy()
    got = np.asarray(disc(video))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_hinge_losses_analytic():
    zeros = jnp.zeros((2, 3))
    assert float(hinge_d_loss(zeros, zeros)) == pytest.approx(1.0)
    # Confident and correct: no loss. Confidently wrong by 2: (3 + 3) / 2.
    assert float(hinge_d_loss(zeros + 5.0, zeros - 5.0)) == 0.0
    assert float(hinge_d_loss(zeros - 2.0, zeros + 2.0)) == pytest.approx(3.0)
    real, fake = jnp.array([0.5, 2.0, -1.0]), jnp.array([-0.5, 0.0, -3.0])
    want = 0.5 * (np.mean([0.5, 0.0, 2.0]) + np.mean([0.5, 1.0, 0.0]))
    assert float(hinge_d_loss(real, fake)) == pytest.approx(want)
    assert float(hinge_g_loss(fake)) == pytest.approx(3.5 / 3)


def test_bad_input_raises():
    disc = PatchDiscriminator3D(8, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
        disc(jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="num_layers=0"):
        PatchDiscriminator3D(8, 0, rngs=nnx.Rngs(0))
