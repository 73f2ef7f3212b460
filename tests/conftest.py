"""Test-wide environment: offline, CPU, 8 fake devices for mesh tests.

Set before JAX is imported anywhere, so every test sees the same 8 host devices.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Two pytest-xdist workers share the 2 cores: one intra-op thread each for PyTorch and
# NumPy's BLAS (OpenMP pools sized to every core, twice over, spin against each other; the
# PyTorch-generating parity test ran 5x slower beside another worker than alone). Read when
# torch is first imported, so set here, before any test module imports it.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
  os.environ.setdefault("OMP_NUM_THREADS", "1")

import atexit
import shutil
import sys
import tempfile

# One persistent XLA compilation cache for the whole run, fresh each run, for the one-device
# `pbrl-train` subprocesses only (`train_testlib.cli_env` hands it to them): they build the
# same tiny programs, and each compiles them once. A cache hit loads the executable XLA
# compiled from the same HLO and flags, so results do not change; only wall time does.
# The test processes themselves (8 fake devices) compile their own: the 8-device update
# program (its state donated) loaded from a persistent cache aborted the process in a later
# step now and then (jaxlib 0.10.2 on CPU; 2 of 7 runs of tests/train/test_stages.py's
# trailing-padding test with only that program cached, 0 of 10 with every other program
# cached but that one; a CI run and one local run lost a worker to it). A user's own
# JAX_COMPILATION_CACHE_DIR is still honoured, by the test processes too, at that risk.
if "PBRL_TEST_XLA_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="pbrl_test_xla_cache_")
  os.environ["PBRL_TEST_XLA_CACHE_DIR"] = _CACHE
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

# One directory for what the whole run may share (the tiny pivot references, built once by
# the first test that needs them: train_testlib.build_tiny_pivot), fresh each run.
if "PBRL_TEST_SHARED_DIR" not in os.environ:
  _SHARED = tempfile.mkdtemp(prefix="pbrl_test_shared_")
  os.environ["PBRL_TEST_SHARED_DIR"] = _SHARED
  atexit.register(shutil.rmtree, _SHARED, ignore_errors=True)

# Shared test utilities (reference models, fixtures writers) live next to this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
