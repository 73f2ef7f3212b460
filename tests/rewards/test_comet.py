"""COMET-style estimator: loader on a synthetic checkpoint in the Unbabel COMET layout."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from pbrl_jax.rewards import comet


def _write_checkpoint(path, in_dim, hidden=(16, 8), rng=None):
  rng = rng or np.random.default_rng(0)
  sizes = [in_dim, *hidden, 1]
  tensors = {"encoder.model.embeddings.word_embeddings.weight": rng.normal(size=(5, 4))
             .astype(np.float32),
             "layerwise_attention.scalar_parameters.0": np.zeros((1,), np.float32)}
  # COMET's FeedForward: Linear, act, Dropout, Linear, act, Dropout, Linear -> ff.0, ff.3, ff.6
  for j, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    tensors[f"estimator.ff.{3 * j}.weight"] = rng.normal(size=(b, a)).astype(np.float32)
    tensors[f"estimator.ff.{3 * j}.bias"] = rng.normal(size=(b,)).astype(np.float32)
  save_file(tensors, str(path))
  return tensors


def _reference(tensors, h, r, act=np.tanh):
  x = np.concatenate([h, r, h * r, np.abs(h - r)], axis=-1)
  idx = sorted({int(k.split(".")[2]) for k in tensors if k.startswith("estimator")})
  for n, i in enumerate(idx):
    x = x @ tensors[f"estimator.ff.{i}.weight"].T + tensors[f"estimator.ff.{i}.bias"]
    if n < len(idx) - 1:
      x = act(x)
  return x[:, 0]


def test_loader_and_scores_match_numpy(tmp_path):
  e = 6
  path = tmp_path / "comet.safetensors"
  tensors = _write_checkpoint(path, 4 * e)
  est = comet.load_comet_estimator(str(path))
  assert est.in_dim == 4 * e and len(est.kernels) == 3
  rng = np.random.default_rng(1)
  h, r = rng.normal(size=(5, e)).astype(np.float32), rng.normal(size=(5, e)).astype(np.float32)
  got = comet.estimator_scores(est, h, r)
  np.testing.assert_allclose(got, _reference(tensors, h, r), rtol=1e-5, atol=1e-5)


def test_loader_errors(tmp_path):
  path = tmp_path / "nothing.safetensors"
  save_file({"x": np.zeros((2,), np.float32)}, str(path))
  with pytest.raises(ValueError, match="estimator.ff"):
    comet.load_comet_estimator(str(path))
  good = tmp_path / "good.safetensors"
  _write_checkpoint(good, 4 * 6)
  est = comet.load_comet_estimator(str(good))
  with pytest.raises(ValueError, match="expects 24 features"):
    comet.estimator_scores(est, np.zeros((1, 5)), np.zeros((1, 5)))
  with pytest.raises(ValueError, match="activation"):
    comet.load_comet_estimator(str(good), activation="swishy")


def test_comet_answer_precision_in_score_batch(tmp_path):
  from configs import reward_defaults
  from pbrl_jax.rewards import RewardSpec, load_reward_models, score_batch
  path = tmp_path / "comet.safetensors"
  tensors = _write_checkpoint(path, 4 * 512)
  cfg = reward_defaults.get_config()
  cfg.answer_precision = "comet"
  cfg.comet_path = str(path)
  cfg.comet_final_activation = "sigmoid"
  spec = RewardSpec.from_config(cfg)
  models = load_reward_models(spec)
  item = {"lang": "de", "response": "Also 3 + 5 = 8.\n#### 8",
          "reference": "So 3 + 5 = 8.\n#### 8"}
  row = score_batch(spec, models, [item])[0]
  from pbrl_jax.rewards.score import reference_embeddings
  h = models.encoder.encode(["8"])  # the canonical final answer is what gets embedded
  r = reference_embeddings(models.encoder, [item["reference"]])["answer"]
  # The NumPy mirror of COMET's estimator head with the final sigmoid, not the code under test.
  want = 1.0 / (1.0 + np.exp(-_reference(tensors, h, r)[0]))
  assert row["answer_precision"] == pytest.approx(float(np.clip(want, 0, 1)), abs=1e-4)
