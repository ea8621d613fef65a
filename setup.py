"""deliberate: multi-agent negotiation GRPO for Collective Agency alignment, in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="deliberate",
    version="0.1.0",
    description="Learning to Negotiate (arXiv 2603.10476) in JAX/Flax: self-play negotiation + GRPO",
    python_requires=">=3.11",
    packages=find_packages(include=["deliberate", "deliberate.*"]),
    package_data={"deliberate": ["data/*.jsonl", "data/capability/*.jsonl", "data/capability/*.csv"]},
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "transformers==5.24.0",
        "tokenizers==0.23.3",
        "safetensors==0.8.0",
        "sentencepiece==0.2.3",
        "ml-collections==1.1.0",
        "absl-py==2.5.1",
        "httpx==0.28.1",
        "tensorflow-datasets==4.9.10",
        "array_record==0.8.6",
        "numpy==2.4.6",
        "jinja2>=3.1,<4",  # chat templates; transformers 5 does not pull it in
        "gguf==0.19.0",
        "starlette>=0.40",
        "uvicorn>=0.30",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "scipy>=1.13",  # sparse n-gram overlap for the data near-duplicate gate
        "ml_dtypes>=0.5",  # bf16 safetensors without torch
    ],
    extras_require={
        # Parity tests run HF's PyTorch models on CPU; 2.13.0 is a CPU wheel (an unpinned torch pulls CUDA).
        # pytest-xdist: the README's test command runs the test files in two processes.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0", "openai>=1.40", "nbclient>=0.10",
                 "nbformat>=5.10", "ipykernel>=6.29"],
        "wandb": ["wandb"],
    },
)
