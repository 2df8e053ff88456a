r"""Tiny text-to-video DiT on the synthetic world (the demo's model): a 4-layer DiT over the tiny
VAE's latents of 5-frame 96x96 clips whose frames are spread over each whole clip (2x12x12
latents, 72 tokens), with a small T5-style text encoder trained jointly on our own
sentencepiece vocabulary. About 15 minutes on 2 CPU cores from precomputed latents. The VAE is
trained at 64x64 and, being convolutional, encodes 96x96 as well; at 96x96 its reconstructions
keep more of what the world grader checks (benchmarks/RESULTS.md, "The ceiling a VAE leaves").

    python -m data_pipelines.train_tokenizer --captions=runs/demo/world/captions.jsonl \
        --out=runs/demo/tokenizer --vocab_size=256
    python -m data_pipelines.precompute --vae_workdir=runs/demo/vae_tiny --data=runs/demo/world \
        --num_frames=5 --height=96 --width=96 --frame_stride=0 --out=runs/demo/latents
    python -m launch.train --config=launch/configs/dit_tiny.py --workdir=runs/demo/dit_tiny \
        --config.vae.workdir=runs/demo/vae_tiny --config.data.path=runs/demo/world \
        --config.data.latents_path=runs/demo/latents

It needs a finished vae run (launch/configs/vae_tiny.py) for the frozen VAE and its latent
statistics; without --config.data.latents_path it encodes every batch with it on the fly. `--config=launch/configs/dit_tiny.py:tiny` shrinks it to a seconds-long smoke run.
"""

from ml_collections import ConfigDict


def get_config(arg: str | None = None) -> ConfigDict:
    """The tiny DiT config; arg "tiny" makes a smoke-test run of a few steps."""
    if arg not in (None, "", "tiny"):
        raise ValueError(f"dit_tiny config arg {arg!r}: expected nothing or 'tiny'")
    c = ConfigDict()
    c.task = "dit"
    c.seed = 0
    c.init_from = ""          # a diffusers WanTransformer3DModel folder to start from
    c.total_steps = 3000
    c.log_every = 100
    c.eval_every = 1000

    text_dim = 128
    c.model = ConfigDict(dict(in_channels=16, out_channels=16, patch_size=(1, 2, 2),
                              hidden_dim=192, num_layers=4, num_heads=4, mlp_dim=768,
                              text_dim=text_dim, freq_dim=256, qk_norm=True,
                              cross_attn_norm=True, remat_policy="none", scan_layers=True))
    c.text = ConfigDict(dict(
        tokenizer="runs/demo/tokenizer.model", max_length=48, trainable=True, pretrained="",
        encoder=ConfigDict(dict(vocab_size=256, d_model=text_dim, d_kv=32, d_ff=256,
                                num_layers=2, num_heads=4))))
    c.vae = ConfigDict(dict(workdir="runs/demo/vae_tiny"))
    c.flow = ConfigDict(dict(logit_normal_mean=0.0, logit_normal_std=1.0, text_dropout=0.1))
    c.sample = ConfigDict(dict(solver="euler", num_steps=20, shift=1.0, cfg_scale=4.0))
    c.data = ConfigDict(dict(path="runs/demo/world", num_frames=5, height=96, width=96,
                             batch_size=16, num_workers=0, num_eval_clips=16,
                             caption_field="caption", frame_stride=0, eval_split="heldout",
                             latents_path=""))
    c.optim = ConfigDict(dict(lr=1e-3, warmup_steps=200, end_lr_factor=0.1, b1=0.9, b2=0.99,
                              weight_decay=0.0, grad_clip=1.0))
    c.ema_decay = 0.995
    c.max_nonfinite_steps = 20
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1, sequence=1))
    c.checkpoint = ConfigDict(dict(every_steps=500, keep=2, async_save=True))
    c.eval = ConfigDict(dict(batch_size=8, num_prompts=8, fps=8.0, seed=0))

    if arg == "tiny":
        c.total_steps, c.log_every, c.eval_every = 4, 2, 4
        c.model.update(hidden_dim=32, num_layers=2, num_heads=2, mlp_dim=64, text_dim=32)
        c.text.encoder.update(d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2)
        c.sample.num_steps = 2
        c.data.update(batch_size=2, num_eval_clips=2, height=64, width=64)
        c.eval.update(num_prompts=2, batch_size=2)
        c.checkpoint.every_steps = 4
        c.optim.warmup_steps = 1
    return c
