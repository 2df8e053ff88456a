"""Analytic FLOPs of a DiT train step: the model FLOPs that MFU divides by, and the FLOPs that the
attention kernels execute (which a compiler's cost model may not see, e.g. Pallas kernels).

Counting convention: 2 FLOPs per multiply-add of every matmul; a train step is 3 x forward
(backward = 2 x forward); rematerialisation, the timestep embedding, norms, modulation and the
optimizer are not model FLOPs (the usual MFU convention: recompute is overhead, not work).
Per clip with L video tokens, M text tokens, width D, MLP width F, N layers:

    dense      6 x (parameters applied to each video token x L + those applied to each text
               token x M): per layer self-attention q, k, v, o (4 D^2), cross-attention q, o
               (2 D^2) and MLP (2 D F) on video tokens, cross-attention k, v (2 D^2) on text
               tokens; once, the patch embedding and output projection (video) and the text
               embedder (text)
    attention  12 x N x D x (L^2 + L x M): scores and values of self- and cross-attention
"""

from __future__ import annotations

import math

import ml_collections

from vidgen.models.dit import KEPT_ATTENTION, DiTConfig
from vidgen.models.vae import VAEConfig

ConfigDict = ml_collections.ConfigDict
# Attention kernel FLOPs per unit L x Lk x D of one layer: the forward (q k^T and p v: 4), and
# the backward of each kernel vidgen/models/attention.py may run as one: splash (separate dq and
# dkv kernels, each recomputing the scores: 2 + 2 + 2 and 2 + 2 + 2 + 2), splash with its fused
# backward and 'blocked' (scores recomputed once: 2, then dv, dp, dq, dk: 2 each).
KERNEL_FORWARD = 4
KERNEL_BACKWARD = {"splash": 14, "splash_fused": 10, "blocked": 10}


def latent_shape(num_frames: int, height: int, width: int, channels: int) -> tuple[int, ...]:
    """(t, h, w, C) latents of a clip under the production VAE's compression (VAEConfig's
    defaults: Wan 2.1's 4x8x8)."""
    return VAEConfig(z_channels=channels).latent_shape(num_frames, height, width)


def dit_tokens(config: ConfigDict, num_frames: int, height: int, width: int) -> int:
    """Video tokens of one clip (patches after the DiT's zero-padding)."""
    shape = latent_shape(num_frames, height, width, config.model.in_channels)
    return math.prod(-(-n // p) for n, p in zip(shape[:3], config.model.patch_size))


def dit_model_flops(cfg: DiTConfig, tokens: int, text_len: int) -> dict[str, float]:
    """Model FLOPs of one clip's train step: {'dense': ..., 'attention': ...} (module doc)."""
    d, f, n = cfg.hidden_dim, cfg.mlp_dim, cfg.num_layers
    p_out = math.prod(cfg.patch_size) * cfg.out_channels
    video_params = n * (6 * d * d + 2 * d * f) + cfg.patch_features * d + d * p_out
    text_params = n * 2 * d * d + cfg.text_dim * d + d * d
    return {"dense": 6.0 * (video_params * tokens + text_params * text_len),
            "attention": 12.0 * n * d * (tokens * tokens + tokens * text_len)}


def attention_kernel_flops(cfg: DiTConfig, tokens: int, text_len: int, kernel: str) -> float:
    """FLOPs the attention kernel (a key of KERNEL_BACKWARD) executes in one clip's train step:
    forward and backward of self- and cross-attention, plus the forward once more where the
    blocks are rematerialised and the remat policy does not keep that kernel's output
    ('save_attention' keeps self-attention's, 'save_dots_attention' both)."""
    kept = KEPT_ATTENTION.get(cfg.remat_policy, ())
    forwards = {name: 1 if cfg.remat_policy == "none" or name in kept else 2
                for name in ("self_attention", "cross_attention")}
    backward = KERNEL_BACKWARD["splash_fused" if kernel == "splash" and cfg.splash_fused_backward
                               else kernel]
    per_unit = cfg.num_layers * cfg.hidden_dim
    return float(per_unit * (
        (forwards["self_attention"] * KERNEL_FORWARD + backward) * tokens * tokens
        + (forwards["cross_attention"] * KERNEL_FORWARD + backward) * tokens * text_len))
