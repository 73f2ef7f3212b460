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

import sys

# Shared test utilities (reference models, fixtures writers) live next to this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
