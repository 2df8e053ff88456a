"""The device mesh, the logical-axis rules, activation shardings, and host -> global arrays.

One mesh with four named axes, `('data', 'fsdp', 'tensor', 'sequence')`, sized from the config
(`-1` = all remaining devices). A single device is still a mesh (all axes of size 1), so the same
code path runs on a laptop and on a pod.

Parameters carry logical axis names (`nnx.with_partitioning(init, ('embed', 'mlp'))`) and models
pin key activations to logical names with `constrain(x, ('act_batch', 'act_len', 'act_embed'))`;
one rules table maps every name to mesh axes. Parameters without names are FSDP-sharded: their
largest dimension divisible by the `fsdp` axis size is split over it, the rest is replicated.

The config interface (read by the loop, the AOT compiler and anything else that builds a mesh):

    config.mesh.data / fsdp / tensor / sequence   axis sizes, one of them may be -1
    config.mesh.rules (optional)                   {logical name: mesh axis | (axes...) | None}
                                                   overriding DEFAULT_RULES entry by entry

`rules_from_config(config.mesh)` gives the validated table. With the defaults: data parallel =
`data` > 1; ZeRO-3 FSDP = `fsdp` > 1 (parameters, gradients, optimizer state split on 'embed');
Megatron tensor parallel = `tensor` > 1 (q/k/v, MLP-in split by columns, out, MLP-out by rows);
sequence parallel = `sequence` > 1 (tokens split on 'act_len', Ulysses attention in
vidgen/parallel/context.py). Any product of them is a mesh; rules such as
`{"mlp": ("fsdp", "tensor")}` remap them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "tensor", "sequence")
BATCH_AXES = ("data", "fsdp")

# Logical name -> mesh axis (or tuple of axes, or None = replicated).
LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]
DEFAULT_RULES: LogicalRules = (
    # activations
    ("act_batch", BATCH_AXES),      # examples
    ("act_len", "sequence"),        # video tokens (sequence parallelism)
    ("act_embed", None),            # the residual stream's features
    ("act_heads", "tensor"),        # attention heads of q, k, v (tensor parallelism)
    ("act_kv", None),               # features of one head
    ("act_mlp", "tensor"),          # MLP hidden features (tensor parallelism)
    # parameters
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


def _as_axes(entry) -> tuple[str, ...]:
    """A rule's value as a tuple of mesh axis names (None -> ())."""
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _check_rule(name: str, value, where: str) -> str | tuple[str, ...] | None:
    """One validated rule value: None, a mesh axis, or a tuple of distinct mesh axes."""
    known = dict(DEFAULT_RULES)
    if name not in known:
        raise ValueError(f"{where}: unknown logical axis {name!r}; known: {sorted(known)}")
    if not (value is None or isinstance(value, str) or (
            isinstance(value, (tuple, list)) and all(isinstance(a, str) for a in value))):
        raise ValueError(f"{where}.{name}={value!r}: expected None, a mesh axis or a tuple of "
                         f"mesh axes from {AXES}")
    axes = _as_axes(value)
    for axis in axes:
        if axis not in AXES:
            raise ValueError(f"{where}.{name}={value!r}: {axis!r} is not a mesh axis {AXES}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"{where}.{name}={value!r}: a mesh axis appears twice")
    return value if value is None or isinstance(value, str) else axes


def resolve_rules(overrides=None, where: str = "config.mesh.rules") -> LogicalRules:
    """DEFAULT_RULES with `overrides` ({name: axes} or (name, axes) pairs) applied, validated:
    names must be known, values mesh axes, and no activation axis may reuse a batch axis (the
    per-sample model code is vmapped over the batch with the batch axes as its spmd axes)."""
    if overrides is None:
        return DEFAULT_RULES
    pairs = list(overrides.items()) if hasattr(overrides, "items") else list(overrides)
    table = dict(DEFAULT_RULES)
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"{where}: entry {pair!r} is not a (logical name, mesh axes) pair")
        table[pair[0]] = _check_rule(pair[0], pair[1], where)
    batch = set(_as_axes(table["act_batch"]))
    for name, value in table.items():
        shared = batch & set(_as_axes(value))
        if name.startswith("act_") and name != "act_batch" and shared:
            raise ValueError(f"{where}.{name}={value!r}: shares mesh axes {sorted(shared)} with "
                             f"act_batch={table['act_batch']!r}")
    return tuple(table.items())


def rules_from_config(mesh_config: Mapping) -> LogicalRules:
    """The validated rules table of config.mesh (DEFAULT_RULES overridden by mesh.rules)."""
    return resolve_rules(mesh_config.get("rules"))


def current_rules() -> LogicalRules:
    """The rules made current by mesh_context (DEFAULT_RULES when none are)."""
    return flax_spmd.get_logical_axis_rules() or DEFAULT_RULES


def splits_anything() -> bool:
    """Whether the current (abstract) mesh has an axis of size > 1 that is not manual."""
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and any(mesh.shape[a] > 1 and a not in mesh.manual_axes
                                  for a in mesh.axis_names)


def active_axes(name: str | None) -> tuple[str, ...]:
    """The mesh axes that logical `name` maps to (current rules) in the current (abstract) mesh
    that actually split something: of size > 1 and not manual (inside shard_map)."""
    mesh = jax.sharding.get_abstract_mesh()
    if name is None or mesh.empty:
        return ()
    table = dict(current_rules())
    if name not in table:
        raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
    manual = set(mesh.manual_axes)
    return tuple(a for a in _as_axes(table[name]) if mesh.shape[a] > 1 and a not in manual)


def axes_size(axes: Sequence[str]) -> int:
    """Devices that the mesh axes `axes` (of the current mesh) span together."""
    mesh = jax.sharding.get_abstract_mesh()
    return math.prod(mesh.shape[a] for a in axes)


def spec_entry(axes: Sequence[str]) -> str | tuple[str, ...] | None:
    """A PartitionSpec entry for mesh axes: None, one name, or a tuple of names."""
    return None if not axes else axes[0] if len(axes) == 1 else tuple(axes)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Pins activation x to the sharding its logical axis `names` get from the current mesh and
    rules (mesh_context). Dims whose size does not divide over their axes stay replicated; the
    identity when no mesh axis splits anything (one device, or all axes manual)."""
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} logical axes {tuple(names)} for an array of "
                         f"shape {x.shape}")
    if not splits_anything():
        return x
    spec = []
    for size, name in zip(x.shape, names):
        axes = active_axes(name)
        spec.append(spec_entry(axes) if axes and size % axes_size(axes) == 0 else None)
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*spec))


def dividing_axes(logical: str, size: int) -> tuple[str, ...]:
    """The active mesh axes of a logical axis (active_axes) if they divide `size`, else ()."""
    axes = active_axes(logical)
    return () if axes and size % axes_size(axes) else axes


def batch_spmd_axes(batch_size: int) -> tuple[str, ...] | None:
    """The mesh axes a vmap over `batch_size` examples should name as its spmd_axis_name (so
    shardings inside per-example code keep the batch split over act_batch's axes), or None
    when those axes split nothing or do not divide the batch."""
    return dividing_axes("act_batch", batch_size) or None


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
    return math.prod(mesh.shape[n] for n in _as_axes(entry))


def array_spec(shape: Sequence[int], names: Sequence[str | None] | None, mesh: Mesh,
               rules: LogicalRules, what: str = "array") -> PartitionSpec:
    """The PartitionSpec of one parameter-like array: its logical names through the rules, or
    the FSDP fallback when it has none. Raises naming `what` if a sharded dim does not divide."""
    if not names:
        return fsdp_spec(shape, mesh.shape["fsdp"])
    if len(names) != len(shape):
        raise ValueError(f"{what}: {len(names)} logical axes {tuple(names)} for shape {shape}")
    spec = logical_to_spec(names, rules)
    used = [axis for entry in spec for axis in _as_axes(entry)]
    if len(set(used)) != len(used):
        raise ValueError(f"{what}: logical axes {tuple(names)} map to {spec}, which uses a "
                         "mesh axis twice")
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
