r"""Wan 2.1-shaped 14B text-to-video DiT (5120 hidden, 40 layers, 40 heads): dit_1b3's recipe at
the large widths. Arg as in dit_1b3: 480p (default), 720p, or tiny.

    python -m launch.train --config=launch/configs/dit_14b.py:720p --workdir=gs://BUCKET/dit_14b \
        --config.data.path=gs://BUCKET/shards --config.vae.workdir=gs://BUCKET/vae_base \
        --config.text.pretrained=/path/to/umt5-xxl --config.text.tokenizer=/path/to/spiece.model
"""

from ml_collections import ConfigDict

from launch.configs import dit_1b3


def get_config(arg: str | None = None) -> ConfigDict:
    """dit_1b3's config with the 14B widths."""
    return dit_1b3.get_config(arg, model=dict(hidden_dim=5120, num_layers=40, num_heads=40,
                                              mlp_dim=13824))
