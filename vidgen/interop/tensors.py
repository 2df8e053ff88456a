"""What every weight mapping in vidgen/interop needs from a foreign tensor."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np


def to_numpy(value: Any, key: str) -> np.ndarray:
    """A floating numpy array from a numpy array or a torch tensor (bfloat16 goes through
    float32); raises naming `key` if it is not floating point."""
    if hasattr(value, "detach"):            # torch.Tensor, without importing torch
        value = value.detach().cpu()
        value = (value.float() if str(value.dtype) == "torch.bfloat16" else value).numpy()
    array = np.asarray(value)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise ValueError(f"{key}: dtype {array.dtype} is not floating point")
    return array
