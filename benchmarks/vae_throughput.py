"""Encode + decode throughput of our CausalVAE against diffusers' AutoencoderKLWan on CPU.

Both models get the same random weights (diffusers' init, copied into ours) and the same clip;
ours runs the whole-clip jitted encode + decode (and, for reference, the streaming pair),
diffusers its frame-chunked encode/decode (torch.no_grad, float32). One warm-up pass each (our
compile) is excluded; the rest are timed. The outputs are compared as a sanity check. The
defaults take ~1-2 minutes on 2 cores (Wan widths cost ~75 GFLOP per 64x64 frame for the pair);
the machine may be shared, so the numbers are noisy.

    python benchmarks/vae_throughput.py [--frames=9 --size=64 --base_channels=96 --repeats=2]

Last line: `speedup_vs_diffusers=R` (our whole-clip frames/s over diffusers' frames/s).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax                      # noqa: E402
import jax.numpy as jnp         # noqa: E402
import numpy as np              # noqa: E402
import torch                    # noqa: E402
from diffusers import AutoencoderKLWan   # noqa: E402
from flax import nnx            # noqa: E402

from vidgen.interop import wan_vae      # noqa: E402
from vidgen.models.vae import CausalVAE, VAEConfig   # noqa: E402


def _timed(fn, repeats: int) -> tuple[float, object]:
    """Seconds per call of fn() after one untimed warm-up call, and its last result."""
    out = fn()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return (time.perf_counter() - start) / repeats, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--base_channels", type=int, default=VAEConfig.base_channels)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    torch.manual_seed(0)
    theirs = AutoencoderKLWan(base_dim=args.base_channels).eval()
    config = wan_vae.config_from_diffusers(dict(theirs.config))
    ours = nnx.eval_shape(lambda: CausalVAE(config, rngs=nnx.Rngs(0)))
    wan_vae.load_state_dict(ours, theirs.state_dict())
    video = np.random.default_rng(0).uniform(
        -1, 1, (args.batch, args.frames, args.size, args.size, 3)).astype(np.float32)
    frames = args.batch * args.frames

    graphdef, state = nnx.split(ours)

    @jax.jit
    def roundtrip(state, x):
        vae = nnx.merge(graphdef, state)
        return vae.decode(vae.encode(x).mode())

    x = jnp.asarray(video)
    t_ours, y_ours = _timed(lambda: jax.block_until_ready(roundtrip(state, x)), args.repeats)
    t_stream, _ = _timed(lambda: ours.decode_streaming(ours.encode_streaming(video).mean),
                         args.repeats)

    x_torch = torch.from_numpy(video).permute(0, 4, 1, 2, 3).contiguous()

    def torch_roundtrip():
        with torch.no_grad():
            return theirs.decode(theirs.encode(x_torch).latent_dist.mode()).sample

    t_theirs, y_theirs = _timed(torch_roundtrip, args.repeats)
    err = np.abs(np.clip(np.asarray(y_ours), -1, 1) - y_theirs.permute(0, 2, 3, 4, 1).numpy()).max()
    print(f"clip [{args.batch}, {args.frames}, {args.size}, {args.size}, 3], base_channels="
          f"{args.base_channels}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    print(f"ours (jax {jax.__version__}, whole-clip jit): {t_ours:.2f} s, "
          f"{frames / t_ours:.2f} frames/s")
    print(f"ours, streaming (default chunks): {t_stream:.2f} s, "
          f"{frames / t_stream:.2f} frames/s")
    print(f"diffusers (torch {torch.__version__}): {t_theirs:.2f} s, "
          f"{frames / t_theirs:.2f} frames/s")
    print(f"max abs difference of the clamped reconstructions: {err:.2e}")
    print(f"speedup_vs_diffusers={t_theirs / t_ours:.3f}")


if __name__ == "__main__":
    main()
