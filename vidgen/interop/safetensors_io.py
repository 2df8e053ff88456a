"""Folders of safetensors weights in the layout diffusers and transformers use: read one tensor
at a time, written one shard at a time, so a model is never held twice in host memory.

A folder holds config.json and either one `{name}.safetensors` or shards listed by
`{name}.safetensors.index.json` ({"metadata": {"total_size": bytes}, "weight_map": {key: file}}),
e.g. name = "diffusion_pytorch_model" (diffusers) or "model" (transformers). safetensors files are
a JSON header plus raw little-endian buffers: nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
DIFFUSERS_VERSION = "0.42.1"           # the diffusers release our exports are tested against


def read_config(path: str | os.PathLike, class_name: str) -> dict[str, Any]:
    """config.json of a folder; raises if its `_class_name` (when present) is not class_name."""
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    found = config.get("_class_name", class_name)
    if found != class_name:
        raise ValueError(f"{path}/config.json: _class_name={found!r}, expected {class_name!r}")
    return config


def _weight_files(path: str, name: str) -> dict[str, list[str] | None]:
    """{file: keys the index assigns to it (None without an index)} of a weights folder: the
    index's files, else {name}.safetensors, else every .safetensors file."""
    index_path = os.path.join(path, f"{name}.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        files: dict[str, list[str] | None] = {}
        for key, file in weight_map.items():
            if os.path.basename(file) != file:
                raise ValueError(f"{index_path}: {key} -> {file!r} is not a plain file name")
            files.setdefault(file, []).append(key)
        return files
    if os.path.exists(os.path.join(path, f"{name}.safetensors")):
        return {f"{name}.safetensors": None}
    names = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not names:
        raise FileNotFoundError(f"{path}: no .safetensors weights")
    return {file: None for file in names}


class _Tensors(Mapping):
    """Read-only mapping key -> numpy array over open safetensors files; one read per lookup."""

    def __init__(self, path: str, name: str, stack: contextlib.ExitStack):
        self._handles: dict[str, Any] = {}
        for file, indexed in _weight_files(path, name).items():
            full = os.path.join(path, file)
            if not os.path.exists(full):
                raise FileNotFoundError(f"{full}: listed in the index (e.g. for {indexed[0]}) "
                                        "but missing")
            handle = stack.enter_context(safe_open(full, framework="np"))
            keys = set(handle.keys())
            absent = sorted(set(indexed or ()) - keys)
            if absent:
                raise ValueError(f"{absent[0]}: the index puts it in {file}, which lacks it")
            for key in keys:
                if key in self._handles:
                    raise ValueError(f"{key}: found in more than one file ({file})")
                self._handles[key] = handle

    def __getitem__(self, key: str) -> np.ndarray:
        return self._handles[key].get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._handles)

    def __len__(self) -> int:
        return len(self._handles)


@contextlib.contextmanager
def open_weights(path: str | os.PathLike, name: str = DIFFUSERS_WEIGHTS
                 ) -> Iterator[Mapping[str, np.ndarray]]:
    """The tensors of a weights folder (sharded with an index, or not) as a lazy mapping, valid
    inside the `with` block. Raises naming a key the index misplaces or a missing shard."""
    with contextlib.ExitStack() as stack:
        yield _Tensors(os.fspath(path), name, stack)


def write_weights(path: str | os.PathLike, tensors: Iterable[tuple[str, np.ndarray]], *,
                  name: str = DIFFUSERS_WEIGHTS, max_shard_bytes: int = 5 * 2**30,
                  dtype: Any = None) -> list[str]:
    """Writes (key, array) pairs (consumed lazily) into `path` as `{name}.safetensors`, or, when
    they exceed max_shard_bytes, as `{name}-0000i-of-0000n.safetensors` shards plus the index.
    Arrays are cast to dtype (e.g. "bfloat16") if given. Returns the files written."""
    path, dtype = os.fspath(path), None if dtype is None else jnp.dtype(dtype)
    os.makedirs(path, exist_ok=True)
    if any(f.startswith(name) and ".safetensors" in f for f in os.listdir(path)):
        raise FileExistsError(f"{path} already holds {name}*.safetensors weights")
    shards: list[list[str]] = []
    pending: dict[str, np.ndarray] = {}
    size = total = 0
    for key, array in tensors:
        array = np.ascontiguousarray(array if dtype is None else array.astype(dtype))
        if pending and size + array.nbytes > max_shard_bytes:
            save_file(pending, os.path.join(path, f"{name}.part{len(shards)}"))
            shards.append(list(pending))
            pending, size = {}, 0
        pending[key], size, total = array, size + array.nbytes, total + array.nbytes
    save_file(pending, os.path.join(path, f"{name}.part{len(shards)}"))
    shards.append(list(pending))
    n = len(shards)
    files = [f"{name}.safetensors"] if n == 1 else [
        f"{name}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for i, file in enumerate(files):
        os.replace(os.path.join(path, f"{name}.part{i}"), os.path.join(path, file))
    if n > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {key: file for file, keys in zip(files, shards) for key in keys}}
        with open(os.path.join(path, f"{name}.safetensors.index.json"), "w",
                  encoding="utf-8") as f:
            json.dump(index, f, indent=2)
    return files


def write_config(path: str | os.PathLike, config: Mapping[str, Any]) -> None:
    """Writes config.json into path (created if needed)."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(dict(config), f, indent=2)
