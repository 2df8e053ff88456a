"""Mesh construction, logical-axis rules, the FSDP fallback and host -> global batches
(vidgen/parallel/mesh.py), on the 8 simulated CPU devices."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vidgen.parallel import mesh as mesh_lib


def test_mesh_shape_fills_the_minus_one_axis():
    assert mesh_lib.mesh_shape({"data": -1, "fsdp": 2}, 8) == (4, 2, 1, 1)
    assert mesh_lib.mesh_shape({"data": 1, "fsdp": -1, "tensor": 2}, 8) == (1, 4, 2, 1)
    assert mesh_lib.mesh_shape({"data": -1}, 1) == (1, 1, 1, 1)


@pytest.mark.parametrize("config, match", [
    ({"data": -1, "fsdp": -1}, "at most one axis"),
    ({"data": 3}, "needs 3 devices, there are 8"),
    ({"data": -1, "fsdp": 3}, "do not divide the 8 devices"),
    ({"fsdp": 0}, r"config.mesh.fsdp=0"),
    ({"dat": 8}, r"config.mesh.dat: unknown mesh axis"),
])
def test_mesh_shape_errors_name_the_problem(config, match):
    with pytest.raises(ValueError, match=match):
        mesh_lib.mesh_shape(config, 8)


def test_make_mesh_one_device_is_still_a_mesh():
    mesh = mesh_lib.make_mesh({"data": -1}, jax.devices()[:1])
    assert mesh.axis_names == mesh_lib.AXES and mesh.devices.size == 1
    mesh8 = mesh_lib.make_mesh({"data": 2, "fsdp": -1})
    assert dict(mesh8.shape) == {"data": 2, "fsdp": 4, "tensor": 1, "sequence": 1}


@pytest.mark.parametrize("shape, fsdp, spec", [
    ((8, 32), 8, (None, "fsdp")),       # largest divisible dim
    ((32, 2), 8, ("fsdp",)),
    ((16, 16), 4, ("fsdp",)),           # ties: the first
    ((12, 6), 4, ("fsdp",)),            # 6 does not divide by 4, 12 does
    ((3, 5), 2, ()),                    # nothing divides: replicated
    ((), 8, ()),                        # scalars replicated
    ((64, 64), 1, ()),                  # fsdp=1: replicated
])
def test_fsdp_spec(shape, fsdp, spec):
    assert tuple(mesh_lib.fsdp_spec(shape, fsdp)) == spec


def test_logical_names_go_through_the_rules():
    mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
    rules = mesh_lib.DEFAULT_RULES
    assert mesh_lib.array_spec((8, 32), ("embed", "mlp"), mesh, rules) == P("fsdp", "tensor")
    batch_spec = mesh_lib.array_spec((8, 6), ("act_batch", None), mesh, rules)
    assert batch_spec == P(("data", "fsdp"), None)
    assert mesh_lib.array_spec((8, 32), ("kv", "heads"), mesh, rules) == P(None, "tensor")
    custom = (("embed", None), ("mlp", ("fsdp", "tensor")))
    custom_spec = mesh_lib.array_spec((8, 32), ("embed", "mlp"), mesh, custom)
    assert custom_spec == P(None, ("fsdp", "tensor"))
    with pytest.raises(ValueError, match="logical axis 'hidden' has no rule"):
        mesh_lib.array_spec((8, 32), ("embed", "hidden"), mesh, rules)
    with pytest.raises(ValueError, match=r"w: dim 1 of shape \(8, 3\).*'mlp'"):
        mesh_lib.array_spec((8, 3), ("embed", "mlp"), mesh, rules, what="w")


def test_to_global_shards_the_batch_over_data_and_fsdp():
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4})
    host = {"video": np.arange(8 * 3, dtype=np.uint8).reshape(8, 3), "n": np.arange(8)}
    batch = mesh_lib.to_global(host, mesh)
    assert batch["video"].shape == (8, 3) and batch["video"].dtype == np.uint8
    assert {s.data.shape for s in batch["video"].addressable_shards} == {(1, 3)}
    np.testing.assert_array_equal(np.asarray(batch["video"]), host["video"])
    with pytest.raises(ValueError, match=r"batch\['video'\].*does not split over the 8"):
        mesh_lib.to_global({"video": np.zeros((6, 3))}, mesh)
