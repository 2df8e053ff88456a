r"""Small text-to-video DiT on the synthetic world (8 layers, 384 hidden, 17-frame 128x128 clips,
5x16x16 latents = 320 tokens): dit_tiny's recipe scaled for one GPU or a small TPU slice.

    python -m launch.train --config=launch/configs/dit_small.py --workdir=runs/dit_small \
        --config.vae.workdir=runs/vae_small --config.data.path=runs/world \
        --config.text.tokenizer=runs/tokenizer.model

The VAE run must have trained at this frame size's compression (any vae_tiny/vae_base run).
"""

from ml_collections import ConfigDict

from launch.configs import dit_tiny


def get_config(arg: str | None = None) -> ConfigDict:
    """dit_tiny scaled up; arg "tiny" gives dit_tiny's smoke run."""
    c = dit_tiny.get_config(arg)
    if arg == "tiny":
        return c
    c.total_steps, c.eval_every = 50_000, 5_000
    c.model.update(hidden_dim=384, num_layers=8, num_heads=6, mlp_dim=1536, text_dim=256)
    c.text.encoder.update(d_model=256, d_kv=32, d_ff=512, num_layers=4, num_heads=8)
    c.data.update(num_frames=17, height=128, width=128, batch_size=64, num_workers=4)
    c.optim.update(lr=3e-4, warmup_steps=1_000)
    c.ema_decay = 0.9995
    return c
