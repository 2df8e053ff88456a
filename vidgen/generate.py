"""Text to video: prompt -> tokens -> text encoder -> noise -> ODE solver with CFG over the DiT
-> VAE decode -> uint8 frames.

    gen = VideoGenerator.from_checkpoint("runs/demo/dit_tiny")
    videos = gen.generate(["a red ball moves left"], num_frames=5, height=64, width=64)

The DiT denoises latents normalised by the VAE's per-channel statistics (stored with the VAE
checkpoint by its training run); they are undone before decoding.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidgen.diffusion import samplers
from vidgen.evaluation import visualize
from vidgen.models.text_encoder import TextEncoder, Tokenizer
from vidgen.models.vae import CausalVAE


@partial(jax.jit, static_argnums=0, static_argnames=("solver", "num_steps"))
def sample_latents(graphdef: nnx.GraphDef, state: nnx.State, context: jax.Array,
                   context_mask: jax.Array, noise: jax.Array, cfg_scale: jax.Array | float,
                   shift: jax.Array | float, *, solver: str, num_steps: int) -> jax.Array:
    """Latents [B, t, h, w, C] from noise: the guided flow ODE integrated from t=1 to t=0.
    context/context_mask hold the conditional half then the unconditional half ([2B, ...]).
    Only solver and num_steps shape the program: cfg_scale and shift are traced, so a sweep
    over them reuses one compile."""
    def both_halves(x2, t):
        # Fresh Variables inside the solver loop's trace: nnx.scan rejects outer-trace ones.
        dit = nnx.merge(graphdef, jax.tree.map(lambda a: a, state))
        t2 = jnp.full((x2.shape[0],), t, jnp.float32)
        return dit(x2, t2, context, context_mask).astype(jnp.float32)

    return samplers.sample(samplers.guided(both_halves, cfg_scale), noise, solver=solver,
                           num_steps=num_steps, shift=shift)


@partial(jax.jit, static_argnums=0)
def _encode_text(graphdef, state, ids, mask):
    return nnx.merge(graphdef, state)(ids, mask)


@partial(jax.jit, static_argnums=0)
def _decode(graphdef, state, z):
    return jnp.clip(nnx.merge(graphdef, state).decode(z).astype(jnp.float32), -1.0, 1.0)


@dataclasses.dataclass
class VideoGenerator:
    """Everything sampling needs; build it from a DiT training workdir with from_checkpoint."""
    dit: nnx.Module
    text_encoder: TextEncoder
    tokenizer: Tokenizer
    vae: CausalVAE
    latent_mean: np.ndarray           # [C] per-channel statistics the DiT's latents were
    latent_std: np.ndarray            # normalised with

    @classmethod
    def from_checkpoint(cls, workdir: str, step: int | None = None
                        ) -> tuple[VideoGenerator, ml_collections.ConfigDict]:
        """The EMA DiT (and, if trained jointly, text encoder) of a dit run with its VAE and
        tokenizer, and the run's config.data (the sizes it trained on). workdir may also be
        an inference export of a dit run (launch/export.py --format=inference; no step)."""
        if os.path.exists(os.path.join(workdir, "inference.json")):
            from vidgen.interop import inference
            return inference.load_generator(workdir)
        from vidgen.train.tasks import dit as dit_task   # the task wires checkpoints together
        return dit_task.load_generator(workdir, step)

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[jax.Array, jax.Array]:
        """Text features [B, L, D] and mask [B, L] of the prompts, then of as many empty
        prompts (the unconditional branch of classifier-free guidance): [2B, ...]."""
        ids, mask = self.tokenizer(list(prompts) + [""] * len(prompts))
        graphdef, state = nnx.split(self.text_encoder)
        return _encode_text(graphdef, state, jnp.asarray(ids), jnp.asarray(mask)), jnp.asarray(mask)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(t, h, w, C) of the latents of a num_frames x height x width clip; raises naming a
        size the VAE cannot produce."""
        self.vae.check_video((1, num_frames, height, width, self.vae.config.in_channels))
        return self.vae.config.latent_shape(num_frames, height, width)

    def generate(self, prompts: Sequence[str], *, num_frames: int, height: int, width: int,
                 settings: samplers.SamplerConfig = samplers.SamplerConfig(cfg_scale=4.0),
                 seed: int = 0) -> np.ndarray:
        """uint8 videos [B, num_frames, height, width, 3], one per prompt; the same seed gives
        the same videos (prompt i's noise depends only on (seed, i))."""
        shape = self.latent_shape(num_frames, height, width)
        noise = jnp.stack([jax.random.normal(jax.random.fold_in(jax.random.key(seed), i), shape)
                           for i in range(len(prompts))])
        context, mask = self.encode_prompts(prompts)
        graphdef, state = nnx.split(self.dit)
        z = sample_latents(graphdef, state, context, mask, noise, settings.cfg_scale,
                           settings.shift, solver=settings.solver,
                           num_steps=settings.num_steps)
        z = z * jnp.asarray(self.latent_std, jnp.float32) + jnp.asarray(self.latent_mean,
                                                                          jnp.float32)
        vae_graphdef, vae_state = nnx.split(self.vae)
        return visualize.to_uint8(np.asarray(_decode(vae_graphdef, vae_state, z)))
