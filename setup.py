"""rmjax: a JAX research framework for training and using reward models."""

from setuptools import find_packages, setup

setup(
    name="rmjax",
    version="0.1.0",
    description="Reward models for LLM alignment in JAX/Flax: BT, ArmoRM, ensembles, GRM, SALMON, PPO",
    packages=find_packages(include=["rmjax", "rmjax.*", "configs"]),
    package_data={"rmjax.data": ["*.json"]},
    python_requires=">=3.11",
    # Co-tested ranges: jax 0.10.x (CPU, Python 3.11) and 0.11.x (GPU machines, Python 3.12).
    install_requires=[
        "jax>=0.10.0,<0.12",
        "flax>=0.12.0,<0.13",
        "optax>=0.2.5,<0.3",
        "qwix==0.1.8",              # LoRA / QLoRA adapters (rmjax.models.lora)
        "orbax-checkpoint>=0.12.0,<0.13",
        "transformers>=5.0,<6",
        "accelerate>=1.0",          # transformers needs it to load GGUF files
        "datasets>=4.0,<6",
        "ml-collections>=1.0,<2",
        "absl-py>=2.0",
        "gguf>=0.17,<1",
        "safetensors>=0.5",
        "numpy>=2.0",
        "tqdm>=4.60",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",
    ],
    extras_require={
        "test": ["pytest>=8", "torch==2.13.0", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6",
                 "fastapi>=0.110,<1", "uvicorn>=0.30,<1",
                 # OpenRLHF's remote-RM client (tests/test_serve.py runs it against rmjax serve;
                 # openrlhf itself goes in with --no-deps: its deps are torch/deepspeed/ray/vllm)
                 "aiohttp>=3.9,<4",
                 # tests/test_serve.py: trl.RewardTrainer on an export, trl.GRPOTrainer with
                 # rmjax.client against a live rmjax serve (installs without moving torch or
                 # transformers; the bench extra's version); tests/test_vs_trl.py: TRL's trainer
                 # builds its batches from vs_trl's dump (peft: its LoRA; deps all already here)
                 "trl==1.16.0", "peft==0.21.2"],
        # `rmjax serve` (rmjax.inference.server); the client, rmjax.client, needs nothing
        "serve": ["fastapi>=0.110,<1", "uvicorn>=0.30,<1"],
        # experiments/benchmarks/vs_trl.py: TRL's RewardTrainer + peft LoRA beside rmjax (the
        # versions whose RewardTrainer source the benchmark's notes describe; they install
        # without moving transformers/torch/jax)
        "bench": ["torch==2.13.0", "trl==1.16.0", "peft==0.21.2"],
        "notebooks": ["jupyter", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6"],
        # libtpu matching the installed jax (jax 0.10.2 -> libtpu 0.0.42.*): the splash-attention
        # kernel's TPU backend. Tests still run on CPU (JAX_PLATFORMS=cpu, Pallas interpret mode).
        "tpu": ["jax[tpu]>=0.10.0,<0.12"],
    },
    entry_points={"console_scripts": ["rmjax=rmjax.launch:run"]},
)
