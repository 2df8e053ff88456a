"""The device mesh, the logical-axis rules, and host-local batches -> global arrays.

One mesh with four named axes, `('data', 'fsdp', 'tensor', 'sequence')`, sized from the config
(`-1` = all remaining devices). A single device is still a mesh (all axes of size 1), so the same
code path runs on a laptop and on a pod.

Parameters may carry logical axis names (`nnx.with_partitioning(init, ('embed', 'mlp'))`); a
rules table maps them to mesh axes. Parameters without names are FSDP-sharded: their largest
dimension divisible by the `fsdp` axis size is split over it, the rest is replicated.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "tensor", "sequence")
BATCH_AXES = ("data", "fsdp")

# Logical name -> mesh axis (or tuple of axes, or None = replicated).
LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]
DEFAULT_RULES: LogicalRules = (
    ("act_batch", BATCH_AXES),
    ("act_len", "sequence"),
    ("act_embed", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
)


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Axis sizes in AXES order; one axis may be -1 (gets the devices the others leave)."""
    unknown = sorted(set(mesh_config.keys()) - set(AXES) - {"rules"})
    if unknown:
        raise ValueError(f"config.mesh.{unknown[0]}: unknown mesh axis, expected one of {AXES}")
    sizes = [int(mesh_config.get(axis, 1)) for axis in AXES]
    for axis, size in zip(AXES, sizes):
        if size == 0 or size < -1:
            raise ValueError(f"config.mesh.{axis}={size}: must be a positive size or -1")
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(AXES, sizes))}")
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % fixed:
            raise ValueError(f"config.mesh={dict(zip(AXES, sizes))}: the fixed axes ({fixed}) do "
                             f"not divide the {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ValueError(f"config.mesh={dict(zip(AXES, sizes))}: needs {math.prod(sizes)} "
                         f"devices, there are {num_devices}")
    return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The training mesh over `devices` (default: all), axes AXES, auto-sharded (GSPMD)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def logical_to_spec(names: Sequence[str | None], rules: LogicalRules) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec; raises on a name the rules do not know."""
    table = dict(rules)
    axes = []
    for name in names:
        if name is None or name in AXES:
            axes.append(name)
        elif name in table:
            axes.append(table[name])
        else:
            raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
    return PartitionSpec(*axes)


def fsdp_spec(shape: Sequence[int], fsdp_size: int) -> PartitionSpec:
    """Shards the largest dimension divisible by fsdp_size over 'fsdp' (first on ties)."""
    if fsdp_size == 1:
        return PartitionSpec()
    candidates = [(size, -i) for i, size in enumerate(shape) if size % fsdp_size == 0]
    if not candidates:
        return PartitionSpec()
    dim = -max(candidates)[1]
    return PartitionSpec(*(["fsdp" if i == dim else None for i in range(dim + 1)]))


def _axis_size(mesh: Mesh, entry: str | tuple[str, ...] | None) -> int:
    if entry is None:
        return 1
    names = (entry,) if isinstance(entry, str) else entry
    return math.prod(mesh.shape[n] for n in names)


def array_spec(shape: Sequence[int], names: Sequence[str | None] | None, mesh: Mesh,
               rules: LogicalRules, what: str = "array") -> PartitionSpec:
    """The PartitionSpec of one parameter-like array: its logical names through the rules, or
    the FSDP fallback when it has none. Raises naming `what` if a sharded dim does not divide."""
    if not names:
        return fsdp_spec(shape, mesh.shape["fsdp"])
    if len(names) != len(shape):
        raise ValueError(f"{what}: {len(names)} logical axes {tuple(names)} for shape {shape}")
    spec = logical_to_spec(names, rules)
    for dim, (size, entry) in enumerate(zip(shape, spec)):
        if size % _axis_size(mesh, entry):
            raise ValueError(f"{what}: dim {dim} of shape {tuple(shape)} (logical "
                             f"{names[dim]!r} -> {entry}) does not divide over the mesh "
                             f"({_axis_size(mesh, entry)} devices)")
    return spec


def tree_shardings(tree, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES):
    """NamedShardings for every array in a (possibly abstract) pytree of nnx.Variables and
    arrays: Variables use their `out_sharding` logical names, everything else the FSDP rule."""

    def one(path, leaf):
        what = jax.tree_util.keystr(path)
        if isinstance(leaf, nnx.Variable):
            value = leaf.get_value()
            names = leaf.get_metadata().get("out_sharding")
            spec = array_spec(np.shape(value), names, mesh, rules, what)
            return leaf.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, array_spec(np.shape(leaf), None, mesh, rules, what))

    return jax.tree_util.tree_map_with_path(
        one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ('data', 'fsdp'), other axes replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def to_global(batch, mesh: Mesh):
    """Host-local NumPy batch (leading axis = this host's examples) -> global jax.Arrays
    sharded over the batch axes; raises if the global batch does not divide over them."""
    sharding = batch_sharding(mesh)
    ways = _axis_size(mesh, BATCH_AXES)

    def one(path, x):
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError(f"batch{jax.tree_util.keystr(path)}: a scalar, batch entries need "
                             "a leading batch axis")
        global_size = x.shape[0] * jax.process_count()
        if global_size % ways:
            raise ValueError(f"batch{jax.tree_util.keystr(path)}: global batch of shape "
                             f"{(global_size,) + x.shape[1:]} does not split over the {ways} "
                             f"data x fsdp devices")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map_with_path(one, batch)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Iterator[None]:
    """Makes `mesh` and the logical rules current (for sharding constraints inside models)."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        yield
