r"""Production causal VAE sized like Wan 2.1's (base 96, mults 1,2,4,4, 2 res blocks, 16 latent
channels, 4x8x8 compression), trained with L1 + SSIM + KL and, after 50k steps, a hinge GAN with
VQGAN's adaptive weight. Sized for a TPU v5p-128 slice (64 chips): 128 clips of 17x256x256 per
step, bf16 compute, parameters and optimizer state sharded 8-way (fsdp) inside data-parallel
groups.

    python -m launch.train --config=launch/configs/vae_base.py --workdir=gs://BUCKET/vae_base \
        --config.data.path=gs://BUCKET/clips

`--config=launch/configs/vae_base.py:tiny` keeps the structure (GAN on, fsdp mesh) at toy
sizes, for a seconds-long CPU smoke run of this exact code path.
"""

from ml_collections import ConfigDict


def get_config(arg: str | None = None) -> ConfigDict:
    """The production VAE config; arg "tiny" shrinks every size for a CPU smoke run."""
    if arg not in (None, "", "tiny"):
        raise ValueError(f"vae_base config arg {arg!r}: expected nothing or 'tiny'")
    c = ConfigDict()
    c.task = "vae"
    c.seed = 0
    c.init_from = ""          # a diffusers AutoencoderKLWan folder to start from
    c.total_steps = 300_000
    c.log_every = 100
    c.eval_every = 5_000

    c.model = ConfigDict(dict(base_channels=96, channel_mults=(1, 2, 4, 4), num_res_blocks=2,
                              z_channels=16, temporal_downsample=(False, True, True),
                              attn_scales=(), dropout=0.0, dtype="bfloat16",
                              param_dtype="float32"))
    c.loss = ConfigDict(dict(l1=1.0, l2=0.0, ssim=0.2, kl=1e-6, disc=0.5, disc_start=50_000,
                             adaptive_disc_weight=True, init_logvar=0.0))
    c.disc = ConfigDict(dict(channels=64, num_layers=3))
    c.data = ConfigDict(dict(path="", num_frames=17, height=256, width=256, batch_size=128,
                             num_workers=8, num_eval_clips=64))
    c.optim = ConfigDict(dict(lr=1e-4, warmup_steps=2_000, end_lr_factor=0.1, b1=0.9, b2=0.95,
                              weight_decay=1e-4, grad_clip=1.0))
    c.ema_decay = 0.999
    c.max_nonfinite_steps = 50
    c.mesh = ConfigDict(dict(data=-1, fsdp=8, tensor=1, sequence=1))
    c.checkpoint = ConfigDict(dict(every_steps=2_000, keep=3, async_save=True))
    c.eval = ConfigDict(dict(batch_size=16, num_videos=8, fps=16.0, latent_stats_batches=32))

    if arg == "tiny":
        c.total_steps, c.log_every, c.eval_every = 4, 2, 4
        c.model.update(base_channels=8, num_res_blocks=1, dtype="float32")
        c.loss.disc_start = 2
        c.disc.channels = 8
        c.data.update(num_frames=5, height=32, width=32, batch_size=8, num_workers=0,
                      num_eval_clips=2)
        c.mesh.fsdp = 2
        c.checkpoint.every_steps = 4
        c.eval.update(batch_size=2, num_videos=2, latent_stats_batches=1)
    return c
