"""launch/export.py on a tiny vae run and a tiny dit run using it: the inference export (through
the command line) round-trips in bfloat16 and samples; the diffusers folders load in diffusers'
WanTransformer3DModel / AutoencoderKLWan and match our forward; StableHLO exports reload and equal
the jitted functions."""

import json
import os
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipelines import train_tokenizer
from launch import export
from launch.configs import dit_tiny, vae_tiny
from vidgen import generate
from vidgen.interop import inference, stablehlo, wan_dit, wan_vae
from vidgen.train import checkpoint, optim
from vidgen.train import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEP = 7
TOL = 1e-4


def _random_params(config, rng: np.random.Generator) -> tuple[nnx.State, nnx.State]:
    """(params, rest) of config's task model with random values of sensible scales: kernels
    ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.01), biases ~ N(0, 0.01). Built from shapes only:
    the models' random initialisers take minutes to compile on a loaded CPU."""
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: inference.build_task_model(config, nnx.Rngs(0)))
    _, params, rest = nnx.split(abstract, nnx.Param, ...)
    for path, var in nnx.to_flat_state(params):
        shape = var.shape
        if len(shape) >= 2:
            value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        else:
            value = (str(path[-1]) in ("scale", "gamma")) + 0.1 * rng.normal(size=shape)
        var.set_value(jnp.asarray(value.astype(var.dtype)))     # no per-shape convert kernel
    return params, rest


def _save_run(workdir, config, extras: dict) -> None:
    """One checkpoint at STEP of config's task as loop.train writes it (train state, grain
    iterator state, meta), with EMA parameters unlike the raw ones."""
    rng = np.random.default_rng(len(config.task))
    params, rest = _random_params(config, rng)
    ema = jax.tree.map(lambda a: jnp.asarray(np.asarray(a) + 0.01 * rng.normal(
        size=a.shape).astype(a.dtype)), params)
    zero = jnp.zeros((), jnp.int32)
    state = state_lib.TrainState(
        step=jnp.int32(STEP), params=params, rest=rest, ema=ema, nonfinite_run=zero,
        nonfinite_total=zero,
        opt_state=jax.jit(optim.make_optimizer(config.optim, config.total_steps).init)(params))
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1, keep=1,
                                   async_save=False)
    meta = {"task": config.task, "config": json.loads(config.to_json_best_effort()),
            "result": {"extras": extras}}
    ckpt.save(STEP, state, iter(grain.MapDataset.range(2).to_iter_dataset()), meta, force=True)
    ckpt.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"vae": workdir, "dit": workdir, "stats": (mean, std)} of tiny runs (tiny configs)."""
    root = tmp_path_factory.mktemp("runs")
    with open(root / "captions.jsonl", "w") as f:
        for i in range(20):
            f.write(json.dumps({"caption": f"a red ball moves left {i % 4}"}) + "\n")
    tokenizer = train_tokenizer.train_tokenizer(str(root / "captions.jsonl"), str(root / "tok"),
                                                vocab_size=32, fields=("caption",), split=None)
    stats = (np.linspace(-0.5, 0.5, 16), np.linspace(0.5, 2.0, 16))
    _save_run(root / "vae", vae_tiny.get_config("tiny"),
              {"latent_mean": stats[0].tolist(), "latent_std": stats[1].tolist()})
    config = dit_tiny.get_config("tiny")
    config.text.update(tokenizer=tokenizer)
    config.text.encoder.vocab_size = 32
    config.vae.workdir = str(root / "vae")
    _save_run(root / "dit", config, {})
    return {"vae": str(root / "vae"), "dit": str(root / "dit"), "stats": stats}


def _dit_inputs(dit, batch: int = 1, latent=(2, 8, 8), length: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, *latent, dit.config.in_channels)).astype(np.float32)
    t = rng.uniform(size=(batch,)).astype(np.float32)
    context = rng.normal(size=(batch, length, dit.config.text_dim)).astype(np.float32)
    return x, t, context


def _forward(dit, x, t, context):
    return np.asarray(nnx.jit(lambda m, *a: m(*a))(dit, x, t, context), np.float32)


def test_inference_export_round_trips_in_bfloat16(runs, tmp_path):
    out = tmp_path / "inference"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}   # one device, as a user's
    done = subprocess.run([sys.executable, "-m", "launch.export", f"--checkpoint={runs['dit']}",
                           "--format=inference", f"--out={out}"], cwd=ROOT, timeout=300,
                          env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "inference.json").read_text())["step"] == STEP
    gen, data = generate.VideoGenerator.from_checkpoint(str(out))     # bf16 DiT, text, VAE
    ema, _, _ = inference.load_run(runs["dit"])
    pairs = [(a, b) for ours, theirs in ((gen.dit, ema.dit), (gen.text_encoder, ema.text))
             for a, b in zip(jax.tree.leaves(nnx.state(ours, nnx.Param)),
                             jax.tree.leaves(nnx.state(theirs, nnx.Param)))]
    assert len(pairs) == len(jax.tree.leaves(nnx.state(ema, nnx.Param)))
    assert all(a.dtype == jnp.bfloat16 and np.array_equal(a, b.astype(jnp.bfloat16))
               for a, b in pairs)
    assert data.num_frames == 5 and gen.vae.decoder.conv_out.kernel[...].dtype == jnp.bfloat16
    np.testing.assert_allclose(gen.latent_std, runs["stats"][1])
    assert gen.tokenizer(["a red ball"])[1].sum() > 1
    x, t, context = _dit_inputs(ema.dit)
    full = _forward(ema.dit, x, t, context)
    restored = _forward(gen.dit, x, t, context)
    graphdef, params, rest = nnx.split(ema.dit, nnx.Param, ...)
    rounded = jax.tree.map(lambda a: a.astype(jnp.bfloat16).astype(jnp.float32), params)
    exact = np.abs(restored - _forward(nnx.merge(graphdef, rounded, rest), x, t, context)).max()
    err, scale = np.abs(restored - full).max(), np.abs(full).max()
    print(f"inference export: bf16 vs f32 forward max abs err {err:.2e} (output scale "
          f"{scale:.2f}); vs the f32 forward of bf16-rounded weights {exact:.1e}")
    # The restored model computes exactly what float32 weights rounded to bfloat16 compute; its
    # weights are each within 2^-9 (relative) of float32 ones, and 2 blocks of ~8 matmuls each
    # let that grow to a few times 2^-9 of the output scale: 2% of it is a 5x margin over 2^-9*8.
    assert exact <= 1e-5 and err <= 0.02 * scale


def test_diffusers_export_runs_in_diffusers(runs, tmp_path):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    folders = export.export_diffusers(runs["dit"], str(tmp_path), max_shard_bytes=50_000)
    assert [os.path.basename(f) for f in folders] == ["transformer", "vae"]
    assert os.path.exists(os.path.join(folders[0],
                                       "diffusion_pytorch_model.safetensors.index.json"))
    ours_dit = inference.load_run(runs["dit"])[0].dit
    ours_vae = inference.load_run(runs["vae"])[0].vae
    theirs_dit = diffusers.WanTransformer3DModel.from_pretrained(folders[0]).eval()
    theirs_vae = diffusers.AutoencoderKLWan.from_pretrained(folders[1]).eval()
    np.testing.assert_allclose(theirs_vae.config.latents_mean, runs["stats"][0])
    x, t, context = _dit_inputs(ours_dit, batch=2, seed=1)
    video = np.random.default_rng(2).uniform(-1, 1, (1, 1, 32, 32, 3)).astype(np.float32)
    channels_first = lambda a: torch.from_numpy(a).permute(0, 4, 1, 2, 3)
    with torch.no_grad():
        v = theirs_dit(channels_first(x), torch.from_numpy(t) * 1000, torch.from_numpy(context),
                       return_dict=False)[0].permute(0, 2, 3, 4, 1).numpy()
        mean = theirs_vae.encode(channels_first(video)).latent_dist.mean
        recon = theirs_vae.decode(mean).sample.permute(0, 2, 3, 4, 1).numpy()
    ours_mean = nnx.jit(lambda m, a: m.encode(a).mean)(ours_vae, video)
    ours_recon = nnx.jit(lambda m, z: jnp.clip(m.decode(z), -1, 1))(ours_vae, ours_mean)
    errors = {"dit": np.abs(_forward(ours_dit, x, t, context) - v).max(),
              "vae_encode": np.abs(np.asarray(ours_mean) - mean.permute(0, 2, 3, 4, 1).numpy()
                                   ).max(),
              "vae_decode": np.abs(np.asarray(ours_recon) - recon).max()}
    print(f"diffusers export vs ours: max abs err {errors} (velocity scale {np.abs(v).max():.2f})")
    assert np.mean(np.abs(recon) < 1) > 0.5 and max(errors.values()) <= TOL
    reloaded = wan_dit.export_state_dict(wan_dit.load_pretrained(folders[0]))   # and back
    assert all(np.array_equal(reloaded[k], a) for k, a in wan_dit.iter_state_dict(ours_dit))
    reloaded = wan_vae.export_state_dict(wan_vae.load_pretrained(folders[1]))
    assert all(np.array_equal(reloaded[k], a) for k, a in wan_vae.iter_state_dict(ours_vae))


def _random_inputs(spec: dict, seed: int) -> list[np.ndarray]:
    """Inputs as the export's json describes them: floats ~ N(0, 1), masks with the first half
    True, token ids in [0, 32)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for item in spec["inputs"]:
        shape, dtype = item["shape"], item["dtype"]
        if dtype == "bool":
            arrays.append(np.broadcast_to(np.arange(shape[-1]) < max(1, shape[-1] // 2), shape))
        elif dtype == "int32":
            arrays.append(rng.integers(0, 32, shape).astype(np.int32))
        else:
            arrays.append(rng.normal(size=shape).astype(dtype))
    return arrays


def test_stablehlo_export_reloads_and_equals_jit(runs, tmp_path):
    names = export.export_stablehlo(runs["dit"], str(tmp_path), batch=2, num_frames=1, height=16,
                                    width=16, text_length=6)
    model = inference.load_run(runs["dit"])[0]
    vae = inference.load_run(runs["vae"])[0].vae
    direct = {"vae_decoder": (vae, lambda m, z: jnp.clip(m.decode(z), -1, 1)),
              "denoiser": (model.dit, lambda m, *a: m(*a)),
              "text_encoder": (model.text, lambda m, *a: m(*a))}
    assert names == list(direct)
    for i, name in enumerate(names):
        spec = json.loads((tmp_path / f"{name}.json").read_text())
        inputs = _random_inputs(spec, seed=i)
        got = np.asarray(stablehlo.load(str(tmp_path), name)(*inputs))
        module, fn = direct[name]
        want = np.asarray(nnx.jit(fn)(module, *inputs))
        print(f"stablehlo {name} {[a.shape for a in inputs]}: max abs err vs jit "
              f"{np.abs(got - want).max():.1e}")
        assert got.shape == tuple(spec["outputs"][0]["shape"]) == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
