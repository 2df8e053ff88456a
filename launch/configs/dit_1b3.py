r"""Wan 2.1-shaped 1.3B text-to-video DiT (1536 hidden, 30 layers, 12 heads) on vae_base latents,
with a frozen pretrained UMT5-XXL text encoder (Hugging Face safetensors, 4096-d features).
The arg picks the clip size: 480p (81 frames, 480x832, the default) or 720p (81 x 720x1280).

    python -m launch.train --config=launch/configs/dit_1b3.py:480p --workdir=gs://BUCKET/dit_1b3 \
        --config.data.path=gs://BUCKET/shards --config.vae.workdir=gs://BUCKET/vae_base \
        --config.text.pretrained=/path/to/umt5-xxl --config.text.tokenizer=/path/to/spiece.model

`:tiny` keeps the layout but shrinks every width for a seconds-long smoke run on a CPU.
"""

from ml_collections import ConfigDict

SIZES = {"480p": (81, 480, 832), "720p": (81, 720, 1280)}
MODEL = dict(hidden_dim=1536, num_layers=30, num_heads=12, mlp_dim=8960)


def get_config(arg: str | None = None, model: dict | None = None) -> ConfigDict:
    """The production DiT config at one clip size; `model` overrides the 1.3B widths."""
    size = arg or "480p"
    if size not in (*SIZES, "tiny"):
        raise ValueError(f"dit config arg {arg!r}: expected one of {[*SIZES, 'tiny']}")
    frames, height, width = SIZES.get(size, SIZES["480p"])
    c = ConfigDict()
    c.task = "dit"
    c.seed = 0
    c.total_steps = 200_000
    c.log_every = 50
    c.eval_every = 5_000
    c.model = ConfigDict(dict(in_channels=16, out_channels=16, patch_size=(1, 2, 2),
                              **(model or MODEL), text_dim=4096, freq_dim=256, qk_norm=True,
                              cross_attn_norm=True, remat_policy="full", scan_layers=True,
                              dtype="bfloat16", param_dtype="float32"))
    c.text = ConfigDict(dict(tokenizer="", max_length=512, trainable=False, pretrained="",
                             encoder=ConfigDict()))
    c.vae = ConfigDict(dict(workdir=""))
    c.flow = ConfigDict(dict(logit_normal_mean=0.0, logit_normal_std=1.0, dynamic_shift=True,
                             base_seq_len=256, max_seq_len=32_760, base_shift=0.5,
                             max_shift=1.15, text_dropout=0.1))
    c.sample = ConfigDict(dict(solver="dpmpp_2m", num_steps=50, shift=5.0, cfg_scale=5.0))
    c.data = ConfigDict(dict(path="", num_frames=frames, height=height, width=width,
                             batch_size=256, num_workers=8, num_eval_clips=64,
                             caption_field="caption", frame_stride=1, eval_split="eval",
                             latents_path=""))
    c.optim = ConfigDict(dict(lr=1e-4, warmup_steps=2_000, end_lr_factor=0.1, b1=0.9, b2=0.95,
                              weight_decay=0.01, grad_clip=1.0))
    c.ema_decay = 0.9999
    c.max_nonfinite_steps = 20
    c.mesh = ConfigDict(dict(data=1, fsdp=-1, tensor=1, sequence=1))
    c.checkpoint = ConfigDict(dict(every_steps=1_000, keep=3, async_save=True))
    c.eval = ConfigDict(dict(batch_size=8, num_prompts=16, fps=16.0, seed=0))
    if size == "tiny":
        c.model.update(hidden_dim=48, num_layers=2, num_heads=4, mlp_dim=96, text_dim=32,
                       dtype="float32", remat_policy="none")
        c.data.update(num_frames=9, height=64, width=64, batch_size=2, num_workers=0,
                      num_eval_clips=2)
        c.text.update(trainable=True, max_length=32, encoder=ConfigDict(dict(
            vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)))
        c.total_steps, c.log_every, c.eval_every = 4, 2, 4
        c.eval.update(num_prompts=2, batch_size=2)
        c.sample.num_steps = 2
        c.optim.warmup_steps = 1
        c.checkpoint.every_steps = 4
    return c
