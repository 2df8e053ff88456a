"""TPU slices by name, without TPUs: chip specifications, Cloud TPU accelerator types ->
libtpu topology names, and the compile-only devices of a topology (for vidgen/parallel/aot.py).

    parse_topology("v5p-256")   # Topology('v5p', 'v5p:4x4x8', 128 chips)
    topology_devices("v5p:4x4x8")   # 128 compile-only TPU devices (needs libtpu, not a TPU)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """A TPU generation: HBM per chip, dense bf16 peak per chip (Google's published figures), and
    how its Cloud accelerator type counts (v4/v5p: TensorCores, 2 per chip; v5e/v6e: chips)."""

    hbm_bytes: int
    peak_flops: float
    cores_per_chip: int
    torus_dims: int


CHIPS = {
    "v4": Chip(32 * GIB, 275e12, 2, 3),
    "v5p": Chip(95 * GIB, 459e12, 2, 3),
    "v5e": Chip(16 * GIB, 197e12, 1, 2),
    "v6e": Chip(32 * GIB, 918e12, 1, 2),
}
ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A slice: generation, libtpu topology name (e.g. 'v5p:4x4x8') and its chip count."""

    generation: str
    name: str
    num_chips: int

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]


def _grid(num_chips: int, dims: int) -> tuple[int, ...]:
    """The chip grid Cloud TPU uses for a power-of-two slice: the smallest side doubled until
    the count is reached (v5p: 32 -> 2x4x4, 128 -> 4x4x8; v6e: 8 -> 2x4, 256 -> 16x16); a
    3D slice of 4 chips is one host, 2x2x1."""
    if num_chips < 1 or num_chips & (num_chips - 1):
        raise ValueError(f"{num_chips} chips: name the topology explicitly (e.g. 'v5p:4x4x12') "
                         "for a slice that is not a power of two")
    if dims == 3 and num_chips < 4:
        raise ValueError(f"{num_chips} chips: the smallest 3D slice has 4 chips (2x2x1)")
    sides = [1] * dims
    while math.prod(sides) < num_chips:
        sides[sides.index(min(sides))] *= 2
    sides.sort()
    return tuple(sides[1:] + [1]) if sides[0] == 1 and dims == 3 else tuple(sides)


def parse_topology(topology: str) -> Topology:
    """'v5p-256' (a Cloud TPU accelerator type: v4/v5p count TensorCores, v5e/v6e chips) or a
    libtpu topology name 'v5p:4x4x8' -> Topology; raises naming what it accepts."""
    generation, sep, rest = topology.partition(":" if ":" in topology else "-")
    generation = ALIASES.get(generation, generation)
    if generation not in CHIPS or not sep or not rest:
        raise ValueError(f"topology {topology!r}: expected GEN-N (e.g. v5p-256, v6e-64) or "
                         f"GEN:AxBxC (e.g. v5p:4x4x8), GEN one of {sorted(CHIPS)}")
    chip = CHIPS[generation]
    numbers = rest.split("x") if sep == ":" else [rest]
    if not all(n.isdigit() and int(n) > 0 for n in numbers):
        raise ValueError(f"topology {topology!r}: {rest!r} is not a chip grid or core count")
    if sep == ":":
        return Topology(generation, f"{generation}:{rest}", math.prod(map(int, numbers)))
    cores = int(rest)
    if cores % chip.cores_per_chip:
        raise ValueError(f"topology {topology!r}: {generation}-N counts TensorCores, "
                         f"{chip.cores_per_chip} per chip")
    sides = _grid(cores // chip.cores_per_chip, chip.torus_dims)
    return Topology(generation, f"{generation}:{'x'.join(map(str, sides))}", math.prod(sides))


@functools.lru_cache(maxsize=8)
def topology_devices(name: str) -> tuple[jax.Device, ...]:
    """The compile-only devices of a libtpu topology name (needs libtpu, not a TPU). libtpu
    lets one process per machine hold it unless ALLOW_MULTIPLE_LIBTPU_LOAD is set; with no TPU
    attached nothing is shared, so this sets it (a CPU-only JAX process loads libtpu too)."""
    from jax.experimental import topologies
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    return tuple(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
