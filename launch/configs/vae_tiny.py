r"""Tiny causal VAE on the synthetic world: Wan's 4x8x8 compression into 16 latent channels at
narrow widths, with a 2x2 pixel-unshuffle patch in front (Wan 2.2 style) so that no conv runs
at full resolution, trained on 5-frame 64x64 clips with a plain L2 loss (what PSNR measures). The demo's model: about
15 minutes on 2 CPU cores to ~28 dB PSNR on held-out clips (figures in benchmarks/RESULTS.md).

    python -m data_pipelines.synthetic_world --out=runs/demo/world --num_clips=400 \
        --num_eval_clips=16 --base_size=128
    python -m launch.train --config=launch/configs/vae_tiny.py --workdir=runs/vae_tiny \
        --config.data.path=runs/demo/world

`--config=launch/configs/vae_tiny.py:tiny` shrinks it to a seconds-long smoke run.
"""

from ml_collections import ConfigDict


def get_config(arg: str | None = None) -> ConfigDict:
    """The tiny VAE config; arg "tiny" makes a smoke-test run of a few steps."""
    if arg not in (None, "", "tiny"):
        raise ValueError(f"vae_tiny config arg {arg!r}: expected nothing or 'tiny'")
    c = ConfigDict()
    c.task = "vae"
    c.seed = 0
    c.init_from = ""          # a diffusers AutoencoderKLWan folder to start from
    c.total_steps = 2800
    c.log_every = 100
    c.eval_every = 1000

    c.model = ConfigDict(dict(base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1,
                              z_channels=16, temporal_downsample=(True, True), patch_size=2,
                              attn_scales=(), dropout=0.0))
    c.loss = ConfigDict(dict(l1=0.0, l2=1.0, ssim=0.0, kl=1e-6, disc=0.0, disc_start=0,
                             adaptive_disc_weight=True, init_logvar=-6.0))
    c.disc = ConfigDict(dict(channels=32, num_layers=3))     # used only when loss.disc > 0
    c.data = ConfigDict(dict(path="runs/demo/world", num_frames=5, height=64, width=64,
                             batch_size=4, num_workers=0, num_eval_clips=16,
                             frame_stride=1))
    c.optim = ConfigDict(dict(lr=2e-3, warmup_steps=100, end_lr_factor=0.1, b1=0.9, b2=0.99,
                              weight_decay=0.0, grad_clip=1.0))
    c.ema_decay = 0.99
    c.max_nonfinite_steps = 20
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1, sequence=1))
    c.checkpoint = ConfigDict(dict(every_steps=500, keep=2, async_save=True))
    c.eval = ConfigDict(dict(batch_size=8, num_videos=4, fps=8.0, latent_stats_batches=8))

    if arg == "tiny":
        c.total_steps, c.log_every, c.eval_every = 4, 2, 4
        c.model.update(base_channels=4, channel_mults=(1, 2, 2))
        c.data.update(batch_size=2, num_eval_clips=2)
        c.checkpoint.every_steps = 4
        c.optim.warmup_steps = 1
        c.eval.latent_stats_batches = 1
    return c
