r"""Wan 2.1-shaped 1.3B text-to-video DiT (1536 hidden, 30 layers, 12 heads) on vae_base latents,
with a frozen pretrained UMT5-XXL text encoder (Hugging Face safetensors, 4096-d features).
The arg picks the clip size, RESOLUTION_DURATION: 480p, 720p or 1080p at 5s, 20s or 60s
(16 fps, 1 + 4k frames: 81, 321 or 961), e.g. `720p_20s`; `480p` and `720p` alone mean 5 s.

    python -m launch.train --config=launch/configs/dit_1b3.py:480p_5s --workdir=gs://BUCKET/1b3 \
        --config.data.path=gs://BUCKET/shards --config.vae.workdir=gs://BUCKET/vae_base \
        --config.text.pretrained=/path/to/umt5-xxl --config.text.tokenizer=/path/to/spiece.model

Each size carries the TPU slice it is sized for, its global batch, mesh and remat policy (PLANS),
checked without a TPU by

    python -m launch.aot_compile --config=launch/configs/dit_1b3.py:480p_5s --topology=v5p-64

(per-chip memory, estimated step time and MFU: benchmarks/RESULTS.md). On another slice keep the
mesh's tensor and sequence sizes (fsdp=-1 takes the rest) and scale the batch with the chips.
`:tiny` keeps the layout but shrinks every width for a seconds-long smoke run on a CPU.
"""

from __future__ import annotations

import dataclasses

from ml_collections import ConfigDict, config_dict

FPS = 16
RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280), "1080p": (1080, 1920)}
SECONDS = {"5s": 5, "20s": 20, "60s": 60}
ALIASES = {"480p": "480p_5s", "720p": "720p_5s"}
MODEL = dict(hidden_dim=1536, num_layers=30, num_heads=12, mlp_dim=8960)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one clip size trains: the slice it is sized for, the global batch (clips per step),
    the mesh (fsdp=-1 takes the devices that tensor and sequence leave), the remat policy and
    whether splash runs its fused backward kernel (faster; holds a dq partial per key block)."""

    slice: str
    batch_size: int
    tensor: int = 1
    sequence: int = 1
    remat: str = "full"
    fused_backward: bool = False


PLANS = {     # sequence x tensor must divide the 12 heads (Ulysses) and map onto the slice's torus
    # AOT-checked (benchmarks/RESULTS.md): 55 GiB of 95 per chip, nothing but elementwise work
    # recomputed; the plans without a remat say are the conservative default ('full')
    "480p_5s": Plan("v5p-64", 32, remat="save_dots_attention", fused_backward=True),
    "480p_20s": Plan("v5p-64", 32),
    "480p_60s": Plan("v5p-64", 16, sequence=2),
    "720p_5s": Plan("v5p-64", 32),
    "720p_20s": Plan("v5p-64", 16, sequence=2),
    "720p_60s": Plan("v5p-128", 16, sequence=4),
    "1080p_5s": Plan("v5p-64", 32),
    "1080p_20s": Plan("v5p-128", 16, sequence=4),
    "1080p_60s": Plan("v5p:4x4x12", 16, sequence=12),     # v5p-384
}


def num_frames(seconds: float) -> int:
    """Frames of a clip at FPS, rounded to the VAE's 1 + 4k (5 s -> 81)."""
    return 1 + 4 * round(seconds * FPS / 4)


def clip_size(arg: str | None, plans: dict[str, Plan]) -> str:
    """The PLANS key an arg names (aliases resolved); raises listing the valid args."""
    size = ALIASES.get(arg or "480p", arg or "480p")
    if size not in plans and size != "tiny":
        raise ValueError(f"dit config arg {arg!r}: expected one of "
                         f"{[*plans, *ALIASES, 'tiny']}")
    return size


def get_config(arg: str | None = None, model: dict | None = None,
               plans: dict[str, Plan] | None = None) -> ConfigDict:
    """The production DiT config at one clip size; `model` overrides the 1.3B widths and
    `plans` the per-size slice, batch, mesh and remat."""
    plans = PLANS if plans is None else plans
    size = clip_size(arg, plans)
    plan = plans.get(size, plans["480p_5s"])
    resolution, seconds = size.split("_") if size != "tiny" else ("480p", "5s")
    height, width = RESOLUTIONS[resolution]
    c = ConfigDict()
    c.task = "dit"
    c.seed = 0
    c.init_from = ""          # a diffusers WanTransformer3DModel folder to start from
    c.total_steps = 200_000
    c.log_every = 50
    c.eval_every = 5_000
    c.model = ConfigDict(dict(in_channels=16, out_channels=16, patch_size=(1, 2, 2),
                              **(model or MODEL), text_dim=4096, freq_dim=256, qk_norm=True,
                              cross_attn_norm=True, remat_policy=plan.remat, scan_layers=True,
                              splash_fused_backward=plan.fused_backward,
                              attention_impl=config_dict.placeholder(str),   # None: by platform
                              dtype="bfloat16", param_dtype="float32"))
    c.text = ConfigDict(dict(tokenizer="", max_length=512, trainable=False, pretrained="",
                             encoder=ConfigDict()))
    c.vae = ConfigDict(dict(workdir=""))
    c.flow = ConfigDict(dict(logit_normal_mean=0.0, logit_normal_std=1.0, dynamic_shift=True,
                             base_seq_len=256, max_seq_len=32_760, base_shift=0.5,
                             max_shift=1.15, text_dropout=0.1))
    c.sample = ConfigDict(dict(solver="dpmpp_2m", num_steps=50, shift=5.0, cfg_scale=5.0))
    c.data = ConfigDict(dict(path="", num_frames=num_frames(SECONDS[seconds]), height=height,
                             width=width, batch_size=plan.batch_size, num_workers=8,
                             num_eval_clips=64, caption_field="caption", frame_stride=1,
                             eval_split="eval", latents_path=""))
    c.optim = ConfigDict(dict(lr=1e-4, warmup_steps=2_000, end_lr_factor=0.1, b1=0.9, b2=0.95,
                              weight_decay=0.01, grad_clip=1.0))
    c.ema_decay = 0.9999
    c.max_nonfinite_steps = 20
    c.mesh = ConfigDict(dict(data=1, fsdp=-1, tensor=plan.tensor, sequence=plan.sequence))
    if plan.sequence > 1:     # parameters and optimizer state sharded over the sequence axis too
        c.mesh.rules = ConfigDict({"embed": ("fsdp", "sequence")})
    c.checkpoint = ConfigDict(dict(every_steps=1_000, keep=3, async_save=True))
    c.eval = ConfigDict(dict(batch_size=8, num_prompts=16, fps=float(FPS), seed=0))
    if size == "tiny":
        _shrink(c)
    return c


def _shrink(c: ConfigDict) -> None:
    """The :tiny smoke-run sizes (same layout, every width tiny, one device)."""
    c.model.update(hidden_dim=48, num_layers=2, num_heads=4, mlp_dim=96, text_dim=32,
                   dtype="float32", remat_policy="none")
    c.data.update(num_frames=9, height=64, width=64, batch_size=2, num_workers=0,
                  num_eval_clips=2)
    c.text.update(trainable=True, max_length=32, encoder=ConfigDict(dict(
        vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)))
    c.mesh.update(tensor=1, sequence=1)
    c.total_steps, c.log_every, c.eval_every = 4, 2, 4
    c.eval.update(num_prompts=2, batch_size=2)
    c.sample.num_steps = 2
    c.optim.warmup_steps = 1
    c.checkpoint.every_steps = 4
