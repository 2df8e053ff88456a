"""Ahead-of-time compilation of the real train step for a TPU slice, on a CPU host, and its report.

    report = compile_train_step(task, config, "v5p-256", Bucket(81, 720, 1280, 128))
    print(report.summary())

No TPU is needed: libtpu (setup.py's `tpu` extra) compiles for the compile-only devices of a
named topology (`jax.experimental.topologies.get_topology_desc`), while everything else runs on
the CPU (JAX_PLATFORMS=cpu). The step is the one `vidgen/train/state.py` builds for training: the
abstract train state (shapes from `jax.eval_shape`, shardings from the config's logical rules)
and an abstract global batch for one bucket shape are lowered and compiled for the slice.

Where each number of the report comes from (estimates all; none is measured on a TPU):
- memory, per chip: the compiled program's `memory_analysis()` (every chip runs the same SPMD
  program): arguments (the chip's shard of the train state and batch), outputs (the part in
  donated argument buffers counted once), temporaries (activations, gradients, collectives'
  buffers) and generated code. When the program does not fit, the compiler refuses it with an
  out-of-memory error whose message (its numbers) the report carries instead.
- model FLOPs: analytic, vidgen/train/flops.py (6 x parameters x tokens + attention; no remat
  recompute): what MFU divides by.
- the compiler's cost: `cost_analysis()` "flops" and "optimal_seconds" (its own estimate of the
  per-chip program's run time: compute, memory traffic and collectives as it models them). It
  counts a loop's body once and gives Pallas kernels (splash attention on TPU) no cost at all.
  So the cost comes from extra compiles without loops (`compiler_cost`): DiT layers unrolled,
  1 and 2 of them, extrapolated to all; XLA's collective matmuls (windowed einsums, loops
  over the FSDP ring) off, which the trained program keeps on (it may overlap a little more).
- attention kernels: their FLOPs (vidgen/train/flops.py: forward, remat recompute and the
  kernel's backward) at an ASSUMED share of the chips' peak, `attention_efficiency` (default
  ATTENTION_EFFICIENCY): an assumption, not a compiler estimate; the report names it.
- estimated step time = the compiler's optimal_seconds + the attention kernels' time.
- estimated MFU = model FLOPs / (estimated step time x chips x peak bf16 FLOP/s per chip).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from vidgen.models import attention
from vidgen.models.dit import DiTConfig
from vidgen.parallel import mesh as mesh_lib
from vidgen.parallel import topology as topology_lib
from vidgen.train import flops, optim
from vidgen.train import state as state_lib
from vidgen.train.tasks import Task

ConfigDict = ml_collections.ConfigDict
# Assumed share of peak that the attention kernels reach (the compiler does not cost them).
# With 0.5 this estimate gives 0.32 MFU for dit_14b at 720p x 81 frames (full remat) on v5p,
# where MaxDiffusion's published Wan 14B training of that shape measured about 0.30.
ATTENTION_EFFICIENCY = 0.5
# libtpu options of the compiles the cost model reads: no collective-matmul loops.
COST_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}


@dataclasses.dataclass(frozen=True)
class Bucket:
    """One training shape: clip frames, height, width (pixels) and global batch size."""

    num_frames: int
    height: int
    width: int
    batch_size: int

    def __str__(self) -> str:
        return f"{self.num_frames}x{self.height}x{self.width}, batch {self.batch_size}"


def config_bucket(config: ConfigDict) -> Bucket:
    """The config's own clip shape and batch size (config.data)."""
    d = config.data
    return Bucket(d.num_frames, d.height, d.width, d.batch_size)


def abstract_batch(config: ConfigDict, bucket: Bucket, mesh: Mesh) -> dict:
    """ShapeDtypeStructs of the global batch the train step sees for one bucket (after the
    task's prepare_batch), sharded as the step's in_shardings say (leading axis over the batch
    axes): dit: latents, caption ids and mask, and the frozen encoder's features when the text
    encoder is frozen; vae: the uint8 video."""
    sharding = mesh_lib.batch_sharding(mesh)
    b = bucket.batch_size
    if config.task == "vae":
        shapes = {"video": ((b, bucket.num_frames, bucket.height, bucket.width, 3), jnp.uint8)}
    elif config.task == "dit":
        lc, dt = config.text.max_length, config.model.text_dim
        latents = flops.latent_shape(bucket.num_frames, bucket.height, bucket.width,
                                     config.model.in_channels)
        shapes = {"latents": ((b, *latents), jnp.float32),
                  "text_ids": ((b, lc), jnp.int32), "text_mask": ((b, lc), jnp.bool_)}
        if not config.text.trainable:
            shapes.update(context=((b, lc, dt), jnp.float32),
                          null_context=((lc, dt), jnp.float32), null_mask=((lc,), jnp.bool_))
    else:
        raise ValueError(f"config.task={config.task!r}: no AOT batch for it (dit, vae)")
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
            for k, (shape, dtype) in shapes.items()}


def lower_train_step(task: Task, config: ConfigDict, mesh: Mesh,
                     bucket: Bucket) -> jax.stages.Lowered:
    """The training step of vidgen/train/state.py for `config` on `mesh`, lowered for the
    abstract train state and one bucket's abstract batch (state donated, as in training)."""
    rules = mesh_lib.rules_from_config(config.mesh)
    tx = optim.make_optimizer(config.optim, config.total_steps)
    plan = state_lib.plan_train_state(
        lambda: task.build_model(config, nnx.Rngs(config.seed)), tx, mesh, rules)
    step = state_lib.make_train_step(plan, task, tx,
                                     optim.make_schedule(config.optim, config.total_steps),
                                     config, mesh, rules)
    return step.lower(plan.abstract, abstract_batch(config, bucket, mesh))


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes per chip of the compiled program (its memory_analysis())."""

    arguments: int
    outputs: int
    aliased: int          # outputs living in donated argument buffers
    temporaries: int
    code: int

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code


@dataclasses.dataclass(frozen=True)
class Cost:
    """The compiler's cost model of one step of the per-chip program (its cost_analysis())."""

    flops: float
    seconds: float        # "optimal_seconds"

    @classmethod
    def of(cls, compiled: jax.stages.Compiled) -> Cost:
        cost = compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):          # older jax: one dict per program
            cost = cost[0]
        return cls(float(cost.get("flops", 0.0)), float(cost["optimal_seconds"]))


def _probe_config(config: ConfigDict, num_layers: int) -> ConfigDict:
    """config with `num_layers` unrolled DiT layers (scan_layers off)."""
    probe = ConfigDict(config.to_dict())
    probe.model.update(num_layers=num_layers, scan_layers=False)
    return probe


def compiler_cost(task: Task, config: ConfigDict, mesh: Mesh, bucket: Bucket) -> Cost:
    """The compiler's per-chip cost of the whole step. Its cost model counts a loop's body
    once, so the step is compiled for it without loops: XLA's windowed einsums (collective
    matmuls, loops over the FSDP ring) off (COST_OPTIONS), and DiT layers unrolled, with 1
    and 2 layers, the per-layer difference extrapolated to all of them."""
    def cost(c: ConfigDict) -> Cost:
        lowered = lower_train_step(task, c, mesh, bucket)
        return Cost.of(lowered.compile(compiler_options=COST_OPTIONS))

    if config.task != "dit":
        return cost(config)
    one = cost(_probe_config(config, 1))
    more = config.model.num_layers - 1
    if not more:
        return one
    two = cost(_probe_config(config, 2))
    return Cost(one.flops + more * (two.flops - one.flops),
                one.seconds + more * (two.seconds - one.seconds))


def attention_kernel_flops(config: ConfigDict, bucket: Bucket) -> float:
    """FLOPs per step of the attention kernels that the compiler does not cost: splash (Pallas,
    the default on TPU) or 'blocked' (a loop over query blocks, costed once); 0 when attention
    compiles to loop-free XLA ops, which the compiler costs itself."""
    if config.task != "dit":
        return 0.0
    cfg = DiTConfig.from_dict(config.model.to_dict())
    kernel = attention.choose(cfg.attention_impl, cfg.dtype, "tpu")
    if kernel not in flops.KERNEL_BACKWARD:
        return 0.0
    tokens = flops.dit_tokens(config, bucket.num_frames, bucket.height, bucket.width)
    return bucket.batch_size * flops.attention_kernel_flops(cfg, tokens, config.text.max_length,
                                                            kernel)


def model_flops(config: ConfigDict, bucket: Bucket) -> dict[str, float] | None:
    """Analytic model FLOPs per step (vidgen/train/flops.py); None for tasks without a count."""
    if config.task != "dit":
        return None
    tokens = flops.dit_tokens(config, bucket.num_frames, bucket.height, bucket.width)
    per_clip = flops.dit_model_flops(DiTConfig.from_dict(config.model.to_dict()), tokens,
                                     config.text.max_length)
    return {k: v * bucket.batch_size for k, v in per_clip.items()}


@dataclasses.dataclass(frozen=True)
class AotReport:
    """What one compile says (the module docstring says where each number comes from). Bytes
    and the compiler's cost are per chip; FLOPs otherwise are per step over the whole slice."""

    topology: topology_lib.Topology
    mesh: dict[str, int]
    bucket: Bucket
    hbm_bytes: int                      # per chip
    memory: Memory | None               # None when the compiler ran out of HBM ...
    oom: str | None                     # ... and said so here
    compiler: Cost | None               # None when not estimated
    attention_flops: float              # kernels the compiler does not cost (splash)
    attention_efficiency: float         # assumed share of peak those kernels reach
    model_flops: dict[str, float] | None
    compile_seconds: float

    @property
    def fits(self) -> bool:
        return self.oom is None and self.memory.total <= self.hbm_bytes

    @property
    def peak_flops(self) -> float:
        """Dense bf16 FLOP/s of the whole slice."""
        return self.topology.num_chips * self.topology.chip.peak_flops

    @property
    def attention_seconds(self) -> float:
        return self.attention_flops / (self.peak_flops * self.attention_efficiency)

    @property
    def step_seconds(self) -> float | None:
        """Estimated: the compiler's time plus the uncosted attention kernels'."""
        return None if self.compiler is None else self.compiler.seconds + self.attention_seconds

    @property
    def estimated_mfu(self) -> float | None:
        if self.model_flops is None or self.step_seconds is None:
            return None
        return sum(self.model_flops.values()) / (self.step_seconds * self.peak_flops)

    def summary(self) -> str:
        """The report, one fact per line; the last line is `estimated_mfu=R` when there is one."""
        t, gib = self.topology, lambda n: f"{n / topology_lib.GIB:.2f} GiB"
        lines = [f"topology {t.name} ({t.num_chips} chips), mesh "
                 + " ".join(f"{k}={v}" for k, v in self.mesh.items()) + f"; bucket {self.bucket}"]
        if self.oom is not None:
            lines.append(f"DOES NOT FIT: the compiler ran out of HBM ({gib(self.hbm_bytes)} per "
                         f"chip): {self.oom}")
        else:
            m = self.memory
            lines.append(
                f"per-chip memory (compiler's memory_analysis): arguments {gib(m.arguments)}, "
                f"outputs {gib(m.outputs)} ({gib(m.aliased)} of them in donated arguments), "
                f"temporaries {gib(m.temporaries)}, generated code {gib(m.code)}; total "
                f"{gib(m.total)} of {gib(self.hbm_bytes)} HBM: "
                + ("fits" if self.fits else "DOES NOT FIT"))
        if self.model_flops is not None:
            f = self.model_flops
            lines.append(f"model FLOPs per step (analytic): {sum(f.values()):.4g} (dense "
                         f"{f['dense']:.4g}, attention {f['attention']:.4g})")
        if self.compiler is not None:
            c, n = self.compiler, t.num_chips
            lines.append(f"compiler's cost model: {c.flops * n:.4g} FLOPs per step (all chips), "
                         f"{c.seconds:.4g} s per step (optimal_seconds)")
            if self.attention_flops:
                lines.append(f"attention kernels (not costed by the compiler): "
                             f"{self.attention_flops:.4g} FLOPs at {self.attention_efficiency:.0%}"
                             f" of peak (assumed) = {self.attention_seconds:.4g} s")
            lines.append(f"estimated step time {self.step_seconds:.4g} s; compile took "
                         f"{self.compile_seconds:.0f} s")
        if self.estimated_mfu is not None:
            lines.append(f"estimated MFU = model FLOPs / (step time x {n} chips x "
                         f"{t.chip.peak_flops / 1e12:.0f} TFLOP/s)")
            lines.append(f"estimated_mfu={self.estimated_mfu:.3f}")
        return "\n".join(lines)


def _compile(lowered: jax.stages.Lowered) -> tuple[jax.stages.Compiled | None, str | None]:
    """(compiled, None), or (None, the compiler's message) when it ran out of HBM."""
    try:
        return lowered.compile(), None
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return None, str(e).splitlines()[0]


def compile_train_step(task: Task, config: ConfigDict, topology: str, bucket: Bucket, *,
                       hbm_bytes: int | None = None, estimate_time: bool = True,
                       attention_efficiency: float = ATTENTION_EFFICIENCY) -> AotReport:
    """Compiles the train step for `topology` (e.g. 'v5p-256') and one bucket shape; reports
    memory against `hbm_bytes` per chip (default: the chip's HBM) and, with estimate_time,
    the estimated step time and MFU (one or two more compiles, see compiler_cost)."""
    topo = topology_lib.parse_topology(topology)
    devices = topology_lib.topology_devices(topo.name)
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    start = time.perf_counter()
    compiled, oom = _compile(lower_train_step(task, config, mesh, bucket))
    memory = None if compiled is None else Memory(
        *(getattr(compiled.memory_analysis(), f"{k}_size_in_bytes")
          for k in ("argument", "output", "alias", "temp", "generated_code")))
    cost = None
    if estimate_time and compiled is not None:
        cost = compiler_cost(task, config, mesh, bucket)
    per_device = topo.chip.hbm_bytes * topo.num_chips // len(devices)
    return AotReport(
        topology=topo, mesh=dict(mesh.shape), bucket=bucket,
        hbm_bytes=per_device if hbm_bytes is None else hbm_bytes, memory=memory, oom=oom,
        compiler=cost, attention_flops=attention_kernel_flops(config, bucket),
        attention_efficiency=attention_efficiency, model_flops=model_flops(config, bucket),
        compile_seconds=time.perf_counter() - start)
