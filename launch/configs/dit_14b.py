r"""Wan 2.1-shaped 14B text-to-video DiT (5120 hidden, 40 layers, 40 heads): dit_1b3's recipe at
the large widths, with its own slices, batches, meshes and remat policies per clip size (PLANS).
Args as in dit_1b3: RESOLUTION_DURATION (480p, 720p, 1080p x 5s, 20s, 60s), 480p, 720p, tiny.

    python -m launch.train --config=launch/configs/dit_14b.py:720p_5s --workdir=gs://BUCKET/14b \
        --config.data.path=gs://BUCKET/shards --config.vae.workdir=gs://BUCKET/vae_base \
        --config.text.pretrained=/path/to/umt5-xxl --config.text.tokenizer=/path/to/spiece.model
    python -m launch.aot_compile --config=launch/configs/dit_14b.py:720p_5s --topology=v5p-256
"""

from ml_collections import ConfigDict

from launch.configs import dit_1b3
from launch.configs.dit_1b3 import Plan

MODEL = dict(hidden_dim=5120, num_layers=40, num_heads=40, mlp_dim=13824)
PLANS = {     # sequence x tensor must divide the 40 heads (Ulysses) and map onto the slice's torus
    "480p_5s": Plan("v5p-128", 64),
    "480p_20s": Plan("v5p-256", 32, sequence=4),
    "480p_60s": Plan("v5p-256", 16, sequence=8),
    # AOT-checked (benchmarks/RESULTS.md): 8-way Ulysses leaves room to keep every matmul and
    # attention output; splash's fused backward; the plans without a remat say use 'full'
    "720p_5s": Plan("v5p-256", 16, sequence=8, remat="save_dots_attention", fused_backward=True),
    "720p_20s": Plan("v5p-256", 32, sequence=4),
    "720p_60s": Plan("v5p-512", 32, sequence=8),
    "1080p_5s": Plan("v5p-256", 32, sequence=4),
    "1080p_20s": Plan("v5p-256", 16, sequence=8),
    # v5p-640, the smallest slice 1080p x 60 s fits (AOT: 73.5 GiB per chip, RESULTS.md)
    "1080p_60s": Plan("v5p:4x4x20", 16, sequence=20),
}


def get_config(arg: str | None = None) -> ConfigDict:
    """dit_1b3's config with the 14B widths and PLANS."""
    return dit_1b3.get_config(arg, model=MODEL, plans=PLANS)
