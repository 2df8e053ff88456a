"""Peak host memory of a streaming VAE encode: a 241-frame clip against a 33-frame clip.

Each clip length runs in its own subprocess, which builds the VAE (VAEConfig defaults: Wan 2.1's
widths; random weights drawn with numpy), warms up (compiles the first-chunk and the chunk
programs on a 1 + 4 * chunk_latents frame clip), then measures:
  baseline  = resident memory (VmRSS) after the warm-up, with the peak counter reset there
              (/proc/self/clear_refs = 5);
  peak      = VmHWM after allocating the uint8 clip and running encode_streaming on it.
The number compared is the increment peak - baseline: the memory the clip itself costs (input,
one chunk's activations, the carries, the gathered latents), without the fixed cost of the
runtime, the weights and the compiled programs, which would make any ratio look close to 1.
Streaming should keep it nearly flat in the clip length (the input and latents grow, one
chunk's activations do not). Linux only (reads /proc).

    python benchmarks/vae_memory.py [--size=256 --chunk_latents=2 --base_channels=96]

Last line: `memory_ratio_241_vs_33=R` (increment at 241 frames over increment at 33 frames).
Encoding 241 frames at 256x256 with Wan widths is ~70 TFLOP: many minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _measure(frames: int, size: int, chunk_latents: int, base_channels: int) -> dict:
    """Runs in the child: warm up, reset the peak, encode a clip of `frames`, report MiB."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from vidgen.models.vae import CausalVAE, VAEConfig

    config = VAEConfig(base_channels=base_channels)
    vae = nnx.eval_shape(lambda: CausalVAE(config, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    params = nnx.state(vae, nnx.Param)
    for path, var in nnx.to_flat_state(params):
        scale = np.prod(var.shape[:-1]) ** -0.5 if path[-1] == "kernel" else 0.0
        value = rng.standard_normal(var.shape, np.float32) * scale + (path[-1] == "scale")
        var.set_value(jnp.asarray(value, jnp.float32))
    nnx.update(vae, params)

    warm = np.zeros((1, 1 + 4 * chunk_latents, size, size, 3), np.uint8)
    vae.encode_streaming(warm, chunk_latents=chunk_latents)
    del warm
    gc.collect()
    baseline = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")            # resets VmHWM to the current resident size
    start = time.perf_counter()
    clip = rng.integers(0, 256, (1, frames, size, size, 3), dtype=np.uint8)
    post = vae.encode_streaming(clip, chunk_latents=chunk_latents)
    peak = _status_kib("VmHWM")
    return dict(frames=frames, latents=post.mean.shape[1], seconds=time.perf_counter() - start,
                baseline_mib=baseline / 1024, peak_mib=peak / 1024,
                increment_mib=(peak - baseline) / 1024)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--chunk_latents", type=int, default=2)
    p.add_argument("--base_channels", type=int, default=96)
    p.add_argument("--child_frames", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_frames:
        print(json.dumps(_measure(args.child_frames, args.size, args.chunk_latents,
                                  args.base_channels)))
        return
    results = {}
    for frames in (33, 241):
        cmd = [sys.executable, __file__, f"--child_frames={frames}", f"--size={args.size}",
               f"--chunk_latents={args.chunk_latents}", f"--base_channels={args.base_channels}"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
             os.environ.get("PYTHONPATH", "")]))
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        results[frames] = r = json.loads(out.strip().splitlines()[-1])
        print(f"{frames:3d} frames ({r['latents']} latents) at {args.size}x{args.size}, chunks of "
              f"{4 * args.chunk_latents} frames: baseline {r['baseline_mib']:.0f} MiB, peak "
              f"{r['peak_mib']:.0f} MiB, increment {r['increment_mib']:.0f} MiB, "
              f"{r['seconds']:.0f} s", flush=True)
    total = results[241]["peak_mib"] / results[33]["peak_mib"]
    print(f"peak RSS ratio (including the fixed runtime + weights): {total:.3f}")
    ratio = results[241]["increment_mib"] / results[33]["increment_mib"]
    print(f"memory_ratio_241_vs_33={ratio:.3f}")


if __name__ == "__main__":
    main()
