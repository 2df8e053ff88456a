"""Frozen dataclass configs built from ml_collections dicts, with named errors.

The model, flow and sampler settings are frozen dataclasses (`DiTConfig`, `VAEConfig`,
`TextEncoderConfig`, `FlowConfig`, `SamplerConfig`); a launch config holds them as plain
ConfigDicts. `FromDict` turns one into the other and names any key the dataclass does not have.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import jax.numpy as jnp

T = TypeVar("T", bound="FromDict")


class FromDict:
    """Mixin for a config dataclass: `from_dict` that rejects unknown keys by name."""

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        """Builds a config from a plain dict (e.g. config.model.to_dict()); unknown keys raise."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


def check_dtypes(config: Any, *names: str) -> None:
    """Raises naming the first of `names` whose value on `config` is not a dtype."""
    for name in names:
        try:
            jnp.dtype(getattr(config, name))
        except TypeError as e:
            raise ValueError(f"{type(config).__name__}.{name}={getattr(config, name)!r}: not a "
                             "dtype") from e
