r"""dit_tiny on clips at their native aspect ratios and durations: a bucket table
(data_pipelines/buckets.py) instead of one clip shape, or, with arg "packed", precomputed latents
of every bucket's shape packed into fixed-length token rows (data_pipelines/packing.py).

    python -m data_pipelines.synthetic_world --out=runs/world_mixed --num_clips=1000 \
        --num_eval_clips=16 --num_heldout_prompts=16 --base_size=96
    python -m data_pipelines.bucket_report --data=runs/world_mixed \
        --config=launch/configs/dit_buckets.py
    python -m launch.train --config=launch/configs/dit_buckets.py --workdir=runs/dit_buckets \
        --config.data.path=runs/world_mixed --config.vae.workdir=runs/demo/vae_tiny \
        --config.text.tokenizer=runs/demo/tokenizer.model

Packed, from latents encoded at each clip's bucket shape:

    python -m data_pipelines.precompute --checkpoint=runs/demo/vae_tiny \
        --shards=runs/world_mixed --config=launch/configs/dit_buckets.py --out=runs/latents_mixed
    python -m launch.train --config=launch/configs/dit_buckets.py:packed \
        --workdir=runs/dit_packed --config.data.path=runs/world_mixed \
        --config.data.latents_path=runs/latents_mixed --config.vae.workdir=runs/demo/vae_tiny \
        --config.text.tokenizer=runs/demo/tokenizer.model

The eval clips stay at dit_tiny's 5 x 64 x 64. Args: "", "tiny", "packed", "packed,tiny".
"""

from ml_collections import ConfigDict

from launch.configs import dit_tiny


def get_config(arg: str | None = None) -> ConfigDict:
    """dit_tiny with config.data.buckets (and data.packing with "packed")."""
    parts = set((arg or "").split(",")) - {""}
    if parts - {"tiny", "packed"}:
        raise ValueError(f"dit_buckets config arg {arg!r}: expected parts of 'packed,tiny'")
    c = dit_tiny.get_config("tiny" if "tiny" in parts else None)
    c.data.buckets = ConfigDict(dict(
        resolutions={"64px": 64 * 64, "96px": 96 * 96},
        aspect_ratios=("9:21", "9:16", "3:4", "1:1", "4:3", "16:9", "21:9"),
        num_frames=(1, 5, 9), fps=8.0,
        token_stride=(4, 16, 16),          # tiny VAE: 4x8x8, DiT patch 1x2x2
        max_upscale=1.0, tokens_per_step=512, batch_multiple=1,
        batch_sizes={}, weights={}))
    if "tiny" in parts:
        c.data.buckets.update(resolutions={"64px": 64 * 64}, num_frames=(1, 5),
                              tokens_per_step=64)
    if "packed" in parts:
        c.data.packing = ConfigDict(dict(seq_len=256, max_clips=8))
        c.data.batch_size = 2 if "tiny" in parts else 4     # packed rows per step
    return c
