"""I3D (Carreira & Zisserman 2017): the Inception-v1 network inflated to 3D whose Kinetics-400
logits are the features of FVD, in Flax NNX, channels-last, inference only.

The layout follows the PyTorch port of DeepMind's kinetics-i3d (piergiaj/pytorch-i3d, also
shipped by cd-fvd and used by TATS), so its state dicts load key for key:

    i3d = load_i3d("i3d_pretrained_400.pt")   # or rgb_imagenet.pt, or the same keys as .npz
    logits = I3DFeatures(i3d)(videos)         # uint8 [B, T, H, W, 3] -> [B, 400] float32

Weight files: a state dict of that port's InceptionI3d as `.pt`/`.pth` (read with
torch.load(weights_only=True), so torch must be installed; no pickled code runs), or the same
keys and shapes (`Mixed_3b.b1a.conv3d.weight`, `...bn.running_var`, `logits.conv3d.bias`) as
`.safetensors` (needs the safetensors package) or `.npz` (NumPy only). TorchScript archives
(StyleGAN-V's i3d_torchscript.pt) are not read: their parameters are not named like this port's.

Every convolution and pooling pads like TensorFlow's "SAME" (pooling pads with zeros, as the
port does; every pooled tensor is a ReLU output, so zeros never win). Batch norm uses its
running statistics with eps 1e-5, as the copy in TATS and cd-fvd that computes their FVD
(DeepMind's TensorFlow original used 1e-3: `load_i3d(path, bn_eps=1e-3)`). Clips are resized to 224x224 (bilinear, no
antialiasing, as the port's FVD preprocessing) and scaled to [-1, 1]; the head averages
[2, 7, 7] windows, so a clip needs at least MIN_FRAMES frames: shorter ones are stretched to
STRETCH_FRAMES by repeating frames, which makes their FVD incomparable with published numbers.
"""

from __future__ import annotations

import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.interop import tensors
from vidgen.io.video import check_frames

BN_EPS = 1e-5
SIZE = 224
MIN_FRAMES = 9          # the fewest frames that leave two time steps for the [2, 7, 7] head
STRETCH_FRAMES = 16     # the clip length of FVD's I3D features
HEAD_WINDOW = (2, 7, 7)
# The layers in order: ("unit", out channels, kernel, stride), ("pool", kernel, stride) or
# ("mixed", branch widths b0, b1a, b1b, b2a, b2b, b3b).
LAYERS = (
    ("Conv3d_1a_7x7", ("unit", 64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", ("pool", (1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", ("unit", 64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", ("unit", 192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", ("pool", (1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", ("mixed", (64, 96, 128, 16, 32, 32))),
    ("Mixed_3c", ("mixed", (128, 128, 192, 32, 96, 64))),
    ("MaxPool3d_4a_3x3", ("pool", (3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", ("mixed", (192, 96, 208, 16, 48, 64))),
    ("Mixed_4c", ("mixed", (160, 112, 224, 24, 64, 64))),
    ("Mixed_4d", ("mixed", (128, 128, 256, 24, 64, 64))),
    ("Mixed_4e", ("mixed", (112, 144, 288, 32, 64, 64))),
    ("Mixed_4f", ("mixed", (256, 160, 320, 32, 128, 128))),
    ("MaxPool3d_5a_2x2", ("pool", (2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", ("mixed", (256, 160, 320, 32, 128, 128))),
    ("Mixed_5c", ("mixed", (384, 192, 384, 48, 128, 128))),
)


def max_pool_same(x: jax.Array, kernel: tuple[int, ...], stride: tuple[int, ...]) -> jax.Array:
    """Max pooling of x [B, T, H, W, C] after TensorFlow-"SAME" zero padding."""
    pads = [(0, 0)]
    for size, k, s in zip(x.shape[1:4], kernel, stride):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads.append((total // 2, total - total // 2))
    x = jnp.pad(x, pads + [(0, 0)])
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *kernel, 1), (1, *stride, 1),
                                 "VALID")


class Conv3d(nnx.Module):
    """3D convolution with TensorFlow-"SAME" padding; kernel [t, h, w, in, out]. Load-only:
    the parameters start as zeros and load_i3d fills them."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...],
                 stride: tuple[int, ...], bias: bool):
        self.kernel = nnx.Param(jnp.zeros((*kernel, in_channels, out_channels), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32)) if bias else None
        self.stride = tuple(stride)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(x, self.kernel[...], self.stride, "SAME",
                                         dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
        return y if self.bias is None else y + self.bias[...]


class BatchNorm(nnx.Module):
    """Inference batch norm from running statistics: (x - mean) / sqrt(var + eps) * scale + bias."""

    def __init__(self, channels: int, eps: float):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        inv = jax.lax.rsqrt(self.var[...] + self.eps) * self.scale[...]
        return (x - self.mean[...]) * inv + self.bias[...]


class Unit3D(nnx.Module):
    """Conv3d -> batch norm (bn_eps None: none) -> ReLU (optional)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...],
                 stride: tuple[int, ...] = (1, 1, 1), *, bn_eps: float | None = BN_EPS,
                 bias: bool = False, relu: bool = True):
        self.conv3d = Conv3d(in_channels, out_channels, kernel, stride, bias)
        self.bn = BatchNorm(out_channels, bn_eps) if bn_eps is not None else None
        self.relu = relu

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv3d(x)
        if self.bn is not None:
            x = self.bn(x)
        return jax.nn.relu(x) if self.relu else x


class Mixed(nnx.Module):
    """The Inception block: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | 3x3x3 max pool -> 1x1."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], bn_eps: float):
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(in_channels, w0, (1, 1, 1), bn_eps=bn_eps)
        self.b1a = Unit3D(in_channels, w1a, (1, 1, 1), bn_eps=bn_eps)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3), bn_eps=bn_eps)
        self.b2a = Unit3D(in_channels, w2a, (1, 1, 1), bn_eps=bn_eps)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3), bn_eps=bn_eps)
        self.b3b = Unit3D(in_channels, w3b, (1, 1, 1), bn_eps=bn_eps)

    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = max_pool_same(x, (3, 3, 3), (1, 1, 1))
        return jnp.concatenate([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                                self.b3b(pooled)], axis=-1)


def _out_channels(widths: tuple[int, ...]) -> int:
    return widths[0] + widths[2] + widths[4] + widths[5]


class I3D(nnx.Module):
    """Inception-v1 I3D: x [B, T, H, W, 3] in [-1, 1] -> logits [B, num_classes]."""

    def __init__(self, num_classes: int = 400, bn_eps: float = BN_EPS):
        channels = 3
        for name, (kind, *spec) in LAYERS:
            if kind == "unit":
                setattr(self, name, Unit3D(channels, spec[0], spec[1], spec[2], bn_eps=bn_eps))
                channels = spec[0]
            elif kind == "mixed":
                setattr(self, name, Mixed(channels, spec[0], bn_eps))
                channels = _out_channels(spec[0])
        self.logits = Unit3D(channels, num_classes, (1, 1, 1), bn_eps=None, bias=True,
                             relu=False)

    def features(self, x: jax.Array) -> jax.Array:
        """The Mixed_5c activations [B, T/8, H/32, W/32, 1024] (sizes rounded up)."""
        for name, (kind, *spec) in LAYERS:
            x = max_pool_same(x, *spec) if kind == "pool" else getattr(self, name)(x)
        return x

    def head(self, features: jax.Array) -> jax.Array:
        """Logits [B, num_classes] of Mixed_5c features: [2, 7, 7] average pooling (valid,
        stride 1), the 1x1x1 logits layer, then the mean over the remaining time steps."""
        _, t, h, w, _ = features.shape
        if t < HEAD_WINDOW[0] or (h, w) != HEAD_WINDOW[1:]:
            raise ValueError(f"I3D head needs features of >= 2x7x7, got {t}x{h}x{w}: "
                             f"feed {SIZE}x{SIZE} clips of >= {MIN_FRAMES} frames")
        pooled = jax.lax.reduce_window(features, 0.0, jax.lax.add, (1, *HEAD_WINDOW, 1),
                                       (1, 1, 1, 1, 1), "VALID") / np.prod(HEAD_WINDOW)
        return self.logits(pooled)[:, :, 0, 0, :].mean(axis=1)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.features(x))


def preprocess(videos: np.ndarray) -> jax.Array:
    """uint8 [B, T, H, W, 3] -> float32 [B, T', 224, 224, 3] in [-1, 1]: bilinear resize
    without antialiasing; clips of fewer than MIN_FRAMES frames stretched to STRETCH_FRAMES."""
    videos = check_frames(videos, "videos", batched=True)
    frames = videos.shape[1]
    if frames < MIN_FRAMES:
        videos = videos[:, np.arange(STRETCH_FRAMES) * frames // STRETCH_FRAMES]
    return _resize_unit(jnp.asarray(videos))


@jax.jit
def _resize_unit(videos: jax.Array) -> jax.Array:
    x = videos.astype(jnp.float32)
    x = jax.image.resize(x, x.shape[:2] + (SIZE, SIZE, 3), "linear", antialias=False)
    return 2.0 * x / 255.0 - 1.0


@partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, x: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(x)


class I3DFeatures:
    """The FVD feature extractor: uint8 clips [B, T, H, W, 3] -> I3D logits [B, classes]."""

    def __init__(self, model: I3D):
        self._graphdef, self._state = nnx.split(model)

    def __call__(self, videos: np.ndarray) -> np.ndarray:
        return np.asarray(_logits(self._graphdef, self._state, preprocess(videos)))


_RENAME = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
           "var": "running_var"}


def torch_key(path: tuple[str, ...]) -> str:
    """The PyTorch port's state-dict key of an NNX variable path, e.g.
    ("Mixed_3b", "b1a", "conv3d", "kernel") -> "Mixed_3b.b1a.conv3d.weight"."""
    return ".".join([*map(str, path[:-1]), _RENAME[path[-1]]])


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The floating-point tensors of a .pt/.pth state dict, .safetensors or .npz file."""
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            raw = {k: f[k] for k in f.files}
    elif path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        raw = load_file(path)
    else:
        import torch
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:   # TorchScript archives, pickled modules
            raise ValueError(f"{path}: not a plain state dict ({e}); load it in PyTorch and "
                             "save model.state_dict(), or convert it to .npz") from e
        raw = raw.get("state_dict", raw)
    raw = {k.removeprefix("module."): v for k, v in raw.items()}
    return {k: tensors.to_numpy(v, k) for k, v in raw.items()
            if not k.endswith("num_batches_tracked")}


def load_i3d(path: str, bn_eps: float = BN_EPS) -> I3D:
    """I3D with the weights of a state-dict file (module doc); raises naming missing,
    unexpected or misshapen keys. The class count comes from the logits layer."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no I3D weight file {path}")
    weights = read_state_dict(path)
    if "logits.conv3d.weight" not in weights:
        raise ValueError(f"{path}: no logits.conv3d.weight; is it a pytorch-i3d state dict?")
    classes = weights["logits.conv3d.weight"].shape[0]
    model = nnx.eval_shape(lambda: I3D(classes, bn_eps))
    state = nnx.state(model)
    used = set()
    for var_path, var in nnx.to_flat_state(state):
        key = torch_key(var_path)
        if key not in weights:
            raise ValueError(f"{path}: missing {key}")
        value = weights[key]
        if var_path[-1] == "kernel":       # [out, in, t, h, w] -> [t, h, w, in, out]
            value = value.transpose(2, 3, 4, 1, 0)
        if value.shape != var.shape:
            raise ValueError(f"{path}: {key} has shape {value.shape}, expected {var.shape}")
        var.set_value(jnp.asarray(value, jnp.float32))
        used.add(key)
    if extra := sorted(set(weights) - used):
        raise ValueError(f"{path}: unexpected keys {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    nnx.update(model, state)
    return model
