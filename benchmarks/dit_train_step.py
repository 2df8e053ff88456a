"""DiT train-step throughput: our jitted step against diffusers' WanTransformer3DModel (PyTorch).

Both train the same architecture at the same size (layers, widths, heads, video tokens, text
length) from the same weights (diffusers' init, copied into ours) on the same batch: forward,
MSE loss on the velocity, backward, AdamW (optax / torch.optim). Ours is one jitted step with
donated state and, by default, its layers unrolled (a Python loop over the stacked layers,
`--scan=0`; on the CPU XLA schedules and fuses an unrolled body better than a while loop;
`--scan=1` times nnx.scan, the layout big models use to keep compile time flat); diffusers runs eagerly, then under torch.compile when that works
here (regional compilation of the repeated block, diffusers' recommended way; a failure is
reported, not fatal). First steps (compilation) are excluded; then blocks of our steps and of
diffusers' eager steps alternate (so a change in the machine's load hits both alike) and each
reports its median step time (see `median_seconds`).

Both run in one process, which re-executes itself with GLIBC_TUNABLES=glibc.malloc.hugetlb=1
unless --hugepages=0 (or the variable already asks for it): glibc then backs its large
allocations with transparent huge pages (this machine's THP mode is `madvise`). XLA allocates a
fresh ~0.7 GiB temporary buffer per step; with 4 KiB pages, faulting it in cost ~300k page faults
and ~18% of our step time. PyTorch reuses its buffers and barely notices (~15k faults per step).

Model FLOP utilisation = analytic model FLOPs per step / step time / the machine's float32 matmul
peak, measured here as the better of jnp.dot and torch.matmul on large square matrices. Model
FLOPs per step: vidgen.train.flops.dit_model_flops (3 x forward, every matmul and attention
product, no remat recompute) times the batch; timestep embedding, norms, modulation and the
optimizer are left out (< 1% here). The count is cross-checked against XLA's cost analysis of
the same step with a Python layer loop (XLA counts a scan's body once).

    python benchmarks/dit_train_step.py [--layers=4 --hidden=512 --heads=8 --frames=4 --size=32
                                         --text_len=64 --steps=3 --torch_compile=1
                                         --scan=0 --hugepages=1]

Last line: `speedup_vs_diffusers_eager=R` (our tokens/s over diffusers' eager tokens/s).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
HUGEPAGES = "glibc.malloc.hugetlb=1"


def reexec_with_hugepages() -> None:
    """Restarts this script with glibc's huge-page tunable set (see the module docstring),
    unless --hugepages=0 was given or GLIBC_TUNABLES already sets it."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "--hugepages=0" in sys.argv or "glibc.malloc.hugetlb" in tunables:
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, (tunables, HUGEPAGES))))
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


if __name__ == "__main__":
    reexec_with_hugepages()

import jax                      # noqa: E402
import jax.numpy as jnp         # noqa: E402
import numpy as np              # noqa: E402
import optax                    # noqa: E402
import torch                    # noqa: E402
from diffusers import WanTransformer3DModel   # noqa: E402
from flax import nnx            # noqa: E402

from vidgen.interop import wan_dit            # noqa: E402
from vidgen.models.dit import DiT, DiTConfig   # noqa: E402
from vidgen.train import flops as flops_lib     # noqa: E402


def _seconds_per_call(fn, calls: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def matmul_peaks(n: int = 4096) -> tuple[float, float]:
    """Measured float32 FLOP/s of an n x n matmul: (jnp.dot under jit, torch.matmul)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    t_jax = _seconds_per_call(lambda: dot(a, a).block_until_ready(), 3)
    b = torch.randn(n, n)
    t_torch = _seconds_per_call(lambda: torch.matmul(b, b), 3)
    return 2 * n ** 3 / t_jax, 2 * n ** 3 / t_torch


def median_seconds(fns: dict[str, Callable[[], Any]], steps: int, rounds: int = 2
                   ) -> dict[str, float]:
    """Median seconds per call of each function over `rounds` blocks of `steps` calls, the
    blocks alternating (a, b, a, b) so that a change in the machine's load hits all contenders
    alike. Each block starts with one untimed call: the first JAX step after PyTorch ran spends
    ~1.5 s more in the kernel (page faults on memory PyTorch just released), a cost that a
    training loop does not pay, so calls are not interleaved one by one."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            for _ in range(steps):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def our_step(model: DiT, tx: optax.GradientTransformation):
    """(jitted step(params, opt_state, batch) -> (params, opt_state, loss), params, opt_state);
    params and optimizer state are donated, as in vidgen/train/state.py."""
    graphdef, params = nnx.split(model, nnx.Param)

    def step(params, opt_state, batch):
        def loss_fn(p):
            v = nnx.merge(graphdef, p)(batch["x"], batch["t"], batch["context"], batch["mask"])
            return jnp.mean(jnp.square(v - batch["target"]))
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1)), params, tx.init(params)


def torch_step(model: torch.nn.Module, batch: dict):
    """A closure running one diffusers train step (forward, MSE, backward, AdamW); returns loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    x = torch.from_numpy(batch["x"]).permute(0, 4, 1, 2, 3).contiguous()
    target = torch.from_numpy(batch["target"]).permute(0, 4, 1, 2, 3).contiguous()
    t, context = torch.from_numpy(batch["t"]) * 1000.0, torch.from_numpy(batch["context"])

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        out = model(x, t, context, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(out, target)
        loss.backward()
        opt.step()
        return loss.detach().item()

    return step


def ours_runner(model: DiT, tx: optax.GradientTransformation, batch: dict
                ) -> Callable[[], float]:
    """A closure running one step of our jitted train step on its own state; returns the loss
    (waiting for the step: one host sync per step, as a training loop logging it would)."""
    step, params, opt_state = our_step(model, tx)
    state = {"params": params, "opt": opt_state}
    batch = jax.device_put(batch)

    def run() -> float:
        state["params"], state["opt"], loss = step(state["params"], state["opt"], batch)
        return float(loss)

    return run


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, DiT, dict]:
    """diffusers' WanTransformer3DModel (its init), our DiT with the same weights, and a batch."""
    torch.manual_seed(0)
    theirs = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=args.heads,
        attention_head_dim=args.hidden // args.heads, in_channels=args.channels,
        out_channels=args.channels, text_dim=args.hidden, ffn_dim=args.mlp_ratio * args.hidden,
        num_layers=args.layers).train()
    cfg = wan_dit.config_from_diffusers(dict(theirs.config), scan_layers=bool(args.scan))
    with nnx.use_eager_sharding(False):
        ours = nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0)))
    wan_dit.load_state_dict(ours, theirs.state_dict())
    rng = np.random.default_rng(0)
    shape = (args.batch, args.frames, args.size, args.size, args.channels)
    batch = {"x": rng.normal(size=shape).astype(np.float32),
             "target": rng.normal(size=shape).astype(np.float32),
             "t": rng.uniform(size=(args.batch,)).astype(np.float32),
             "context": rng.normal(size=(args.batch, args.text_len, args.hidden)
                                   ).astype(np.float32),
             "mask": np.ones((args.batch, args.text_len), bool)}
    return theirs, ours, batch


def flops_check(cfg: DiTConfig, tx: optax.GradientTransformation, batch: dict,
                flops: float) -> None:
    """Prints the analytic FLOPs beside XLA's cost analysis of the step with a layer loop."""
    with nnx.use_eager_sharding(False):
        unrolled = nnx.eval_shape(lambda: DiT(dataclasses.replace(cfg, scan_layers=False),
                                              rngs=nnx.Rngs(0)))
    step_u, params_u, opt_u = our_step(unrolled, tx)
    xla_flops = step_u.lower(params_u, opt_u, batch).cost_analysis()["flops"]
    print(f"model FLOPs per step: analytic {flops / 1e9:.1f} G, XLA cost analysis (layer loop) "
          f"{xla_flops / 1e9:.1f} G (ratio {xla_flops / flops:.3f})")


def torch_compile_seconds(theirs: torch.nn.Module, run_theirs: Callable[[], float],
                          steps: int) -> float | None:
    """Median step time of diffusers under torch.compile (regional: one compiled block reused by
    all), or None (with the reason printed) where it fails here."""
    try:
        theirs.compile_repeated_blocks(fullgraph=True)
        start = time.perf_counter()
        run_theirs()
        print(f"torch.compile (compile_repeated_blocks): first step "
              f"{time.perf_counter() - start:.1f} s")
        return median_seconds({"compiled": run_theirs}, steps, rounds=1)["compiled"]
    except Exception as e:                          # noqa: BLE001 -- report why, keep going
        print(f"torch.compile: failed here ({type(e).__name__}: {str(e).splitlines()[0]})")
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--mlp_ratio", type=int, default=4)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=4, help="latent frames")
    p.add_argument("--size", type=int, default=32, help="latent height and width")
    p.add_argument("--text_len", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="timed steps per block (2 blocks)")
    p.add_argument("--scan", type=int, default=0, help="1: nnx.scan over layers; 0: unrolled")
    p.add_argument("--torch_compile", type=int, default=1)
    p.add_argument("--hugepages", type=int, default=1,
                   help="run with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (see the docstring)")
    args = p.parse_args()

    theirs, ours, batch = build(args)
    cfg, tokens = ours.config, args.frames * (args.size // 2) ** 2
    flops = args.batch * sum(flops_lib.dit_model_flops(cfg, tokens, args.text_len).values())
    print(f"DiT: {args.layers} layers, hidden {args.hidden}, {args.heads} heads, mlp "
          f"{cfg.mlp_dim}, batch {args.batch} x {tokens} video tokens, {args.text_len} text "
          f"tokens, float32; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}; load average (1 min) at "
          f"start {os.getloadavg()[0]:.2f}")
    peak_jax, peak_torch = matmul_peaks()
    peak = max(peak_jax, peak_torch)
    print(f"float32 matmul peak (4096^3): jnp.dot {peak_jax / 1e9:.0f} GFLOP/s, torch.matmul "
          f"{peak_torch / 1e9:.0f} GFLOP/s; using {peak / 1e9:.0f}")
    tx = optax.adamw(1e-4, weight_decay=1e-4)
    flops_check(cfg, tx, batch, flops)

    run_ours, run_theirs = ours_runner(ours, tx, batch), torch_step(theirs, batch)
    start = time.perf_counter()
    first_loss = run_ours()
    print(f"first-step loss: ours {first_loss:.6f}, diffusers {run_theirs():.6f} (same weights "
          f"and batch); our compile {time.perf_counter() - start:.1f} s")
    ours_name = f"vidgen DiT (jax, jit, {'scan' if args.scan else 'unrolled'})"
    seconds = median_seconds({ours_name: run_ours,
                              "diffusers eager": run_theirs}, args.steps)
    if args.torch_compile:
        compiled = torch_compile_seconds(theirs, run_theirs, args.steps)
        if compiled is not None:
            seconds["diffusers torch.compile"] = compiled
    print(f"load average (1 min) at the end {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores: "
          f"more means other jobs shared them)")
    for name, s in seconds.items():
        print(f"{name}: {s:.3f} s/step, {args.batch * tokens / s:.0f} tokens/s, "
              f"MFU {flops / s / peak:.1%}")
    print(f"speedup_vs_diffusers_eager="
          f"{seconds['diffusers eager'] / seconds[ours_name]:.3f}")


if __name__ == "__main__":
    main()
