"""The production DiT configs (launch/configs/dit_1b3.py, dit_14b.py): every clip-size arg builds
a config whose clip shape, mesh and batch are consistent with the slice it names, without
compiling anything (launch/aot_compile.py checks that they fit; benchmarks/RESULTS.md). The
slices' devices are libtpu's compile-only ones (setup.py's test extra)."""

import pytest

from launch.configs import dit_1b3, dit_14b
from vidgen.models.dit import DiTConfig
from vidgen.parallel import mesh as mesh_lib
from vidgen.parallel import topology
from vidgen.train import flops

CONFIGS = {"dit_1b3": dit_1b3, "dit_14b": dit_14b}
FRAMES = {"5s": 81, "20s": 321, "60s": 961}          # 16 fps, 1 + 4k


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("size", list(dit_1b3.PLANS))
def test_every_size_fits_its_slice_layout(name, size):
    module = CONFIGS[name]
    c, plan = module.get_config(size), module.PLANS[size]
    resolution, seconds = size.split("_")
    assert (c.data.height, c.data.width) == dit_1b3.RESOLUTIONS[resolution]
    assert c.data.num_frames == FRAMES[seconds] and c.model.remat_policy == plan.remat
    devices = topology.topology_devices(topology.parse_topology(plan.slice).name)
    mesh = mesh_lib.make_mesh(c.mesh, devices)      # the axes map onto the slice's torus
    data, fsdp, tensor, sequence = (mesh.shape[a] for a in mesh_lib.AXES)
    assert c.data.batch_size % (data * fsdp) == 0           # the batch splits over its axes
    model = DiTConfig.from_dict(c.model.to_dict())
    assert model.num_heads % (tensor * sequence) == 0       # Ulysses: heads over both
    assert model.mlp_dim % tensor == 0
    tokens = flops.dit_tokens(c, c.data.num_frames, c.data.height, c.data.width)
    assert tokens % sequence == 0


def test_old_args_and_tiny_still_work():
    assert dit_1b3.get_config("480p").data.num_frames == 81
    assert dit_1b3.get_config().to_dict() == dit_1b3.get_config("480p_5s").to_dict()
    c = dit_14b.get_config("720p")
    assert (c.data.height, c.model.hidden_dim) == (720, 5120)
    tiny = dit_14b.get_config("tiny")
    assert tiny.model.hidden_dim == 48 and tiny.data.num_frames == 9
    with pytest.raises(ValueError, match="expected one of"):
        dit_1b3.get_config("4k_5s")
