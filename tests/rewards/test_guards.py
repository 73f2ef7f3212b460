"""Guards, language identification and the reward spec."""

import dataclasses

import pytest

from configs import reward_defaults
from pbrl_jax.config_schema import ConfigError
from pbrl_jax.rewards import guards, langid
from pbrl_jax.rewards.spec import RewardSpec

TH = RewardSpec.from_config(reward_defaults.get_config()).guards
SAME = {
    "en": "Anna has 3 apples and buys 5 more, so she has 8 apples in total.",
    "de": "Anna hat 3 Äpfel und kauft 5 weitere, also hat sie insgesamt 8 Äpfel.",
    "fr": "Anna a 3 pommes et en achète 5 de plus, donc elle a 8 pommes au total.",
    "es": "Ana tiene 3 manzanas y compra 5 más, así que tiene 8 manzanas en total.",
    "it": "Anna ha 3 mele e ne compra altre 5, quindi ha 8 mele in totale.",
    "pt": "Ana tem 3 maçãs e compra mais 5, então ela tem 8 maçãs no total.",
    "nl": "Anna heeft 3 appels en koopt er 5 bij, dus ze heeft in totaal 8 appels.",
    "pl": "Anna ma 3 jabłka i kupuje jeszcze 5, więc ma w sumie 8 jabłek.",
    "tr": "Anna'nın 3 elması var ve 5 tane daha alıyor, yani toplam 8 elması var.",
    "ru": "У Анны 3 яблока, и она покупает ещё 5, значит всего у неё 8 яблок.",
    "zh": "安娜有3个苹果，又买了5个，所以她一共有8个苹果。",
    "ja": "アンナはりんごを3個持っていて、さらに5個買うので、全部で8個です。",
    "ko": "안나는 사과 3개가 있고 5개를 더 사서 모두 8개가 있습니다.",
    "ar": "لدى آنا ٣ تفاحات وتشتري ٥ أخرى، إذن لديها ٨ تفاحات.",
    "th": "แอนนามีแอปเปิ้ล 3 ลูกและซื้อเพิ่มอีก 5 ลูก ดังนั้นมีทั้งหมด 8 ลูก",
    "hi": "अन्ना के पास 3 सेब हैं और वह 5 और खरीदती है, तो कुल 8 सेब हैं।",
}


@pytest.mark.parametrize("lang", sorted(SAME))
def test_language_consistency_accepts_own_language(lang):
  assert langid.language_consistency(SAME[lang], lang) >= TH.language_hi


@pytest.mark.parametrize("lang", sorted(set(SAME) - {"en"}))
def test_english_answer_is_off_language(lang):
  assert langid.language_consistency(SAME["en"], lang) <= TH.language_lo


def test_latin_languages_are_told_apart():
  assert langid.language_consistency(SAME["pt"], "es") <= TH.language_lo
  assert langid.language_consistency(SAME["de"], "nl") <= TH.language_lo
  assert langid.language_consistency(SAME["zh"], "ja") < 1.0
  assert langid.language_consistency(SAME["en"], None) == 1.0


# What a 135M policy found within 20 steps when the measure passed it: letterless answers, and
# the terse English template in Latin-script languages.
UNDETERMINED = ["3 + 5 = 8", "8", "#### 8", "3 + 5 = 8\n#### 8", "= 8 ok", "8个"]
ENGLISH_TEMPLATES = ["8\nThe answer is 8.", "The answer is 8", "3 + 5 = 8. So it is 8.",
                     "100 The answer is 100."]


@pytest.mark.parametrize("lang", sorted(set(SAME) - {"en"}))
def test_letterless_and_wordless_text_is_undetermined_never_the_target(lang):
  for text in UNDETERMINED:
    score, determined = langid.language_reading(text, lang)
    assert (score, determined) == (0.0, False), (lang, text)
    row = guard_row(text, SAME["en"], "", lang)
    assert row["language_undetermined"] == 1.0 and row["gate_language"] == 0.0, (lang, text)
    assert row["language_consistent"] == 0.0


@pytest.mark.parametrize("lang", sorted(set(SAME) - {"en"}))
def test_terse_english_template_is_english(lang):
  for text in ENGLISH_TEMPLATES:
    score, determined = langid.language_reading(text, lang)
    assert determined and score <= TH.language_lo, (lang, text, score)


def test_short_target_language_answers_are_determined():
  assert langid.language_reading("Die Antwort ist 8.", "de") == (1.0, True)
  assert langid.language_reading("La réponse est 8, donc elle a 8 pommes.", "fr") == (1.0, True)
  assert langid.language_reading("The answer is 8.", "en") == (1.0, True)
  # One word with no function word: undetermined in a Latin-script language, plainly not the
  # language in another script.
  assert langid.language_reading("8 Äpfel", "de") == (0.0, False)
  assert langid.language_reading("8 Äpfel", "ru") == (0.0, True)
  score, determined = langid.language_reading("Ответ: 8 яблок.", "ru")
  assert determined and score == 1.0
  # Held-out Spanish answers of the demo's trained policy (2026-12): "hay" is what a Spanish
  # word problem opens with, and these were counted undetermined before it was profiled.
  assert langid.language_reading("Hay 9 lápices, cada 6 cajas contiene 9.\n#### 9",
                                 "es") == (1.0, True)
  assert langid.language_reading("Há 9 lápis em cada caixa.", "pt") == (1.0, True)


def test_guard_values():
  honest = guard_row(SAME["de"], SAME["en"], "Anna hat 3 Äpfel. Wie viele?", "de")
  assert honest["gate"] == 1.0
  copied = guard_row(SAME["en"], SAME["en"], "", "de")
  assert copied["copy_reference"] == 1.0 and copied["gate_copy"] == 0.0
  loop = guard_row("Anna hat 3 Äpfel. " * 30, SAME["en"], "", "de")
  assert loop["repetition"] > TH.repetition_hi and loop["gate_repetition"] == 0.0
  empty = guard_row(" \n ", SAME["en"], "", "de")
  assert empty["empty"] == 1.0 and empty["gate"] == 0.0
  short = guard_row("8", SAME["en"] * 3, "", "de")
  assert short["length_ratio"] < TH.length_lo and 0.0 < short["gate_length"] < 1.0
  # CJK characters are weighted so a Chinese translation has a ratio near 1.
  assert 0.5 < guard_row(SAME["zh"], SAME["en"], "", "zh")["length_ratio"] < 2.0


def guard_row(response, reference, question, lang, th=TH):
  return guards.guard_values(response, reference, question, lang, th)


def test_guard_weights_soften_gates():
  th = dataclasses.replace(TH, language_weight=0.25, copy_weight=0.0)
  row = guard_row(SAME["en"], SAME["en"] + " extra words here", "", "de", th)
  assert row["gate_language"] == 0.0 and row["gate_copy"] == 0.0
  assert row["gate"] == pytest.approx(0.75)  # 1 - 0.25 * (1 - 0); copy switched off


def test_spec_from_defaults_and_errors():
  spec = RewardSpec.from_config(reward_defaults.get_config())
  assert spec.kind == "hybrid" and spec.guards.copy_question_lo == 0.85
  cfg = reward_defaults.get_config()
  cfg.kind = "magic"
  with pytest.raises(ConfigError, match=r"reward\.kind"):
    RewardSpec.from_config(cfg)
  for key, value, pattern in (("alpha", 1.5, r"reward\.alpha"), ("bogus", 1, r"reward\.bogus"),
                              ("answer_precision", "comet", r"reward\.comet_path")):
    d = reward_defaults.get_config().to_dict()
    d[key] = value
    with pytest.raises(ConfigError, match=pattern):
      RewardSpec.from_config(d)
  d = reward_defaults.get_config().to_dict()
  d["guards"]["copy_lo"] = 0.9
  with pytest.raises(ConfigError, match=r"reward\.guards\.copy_lo"):
    RewardSpec.from_config(d)
  d = reward_defaults.get_config().to_dict()
  d["guards"]["language_weight"] = "high"
  with pytest.raises(ConfigError, match=r"reward\.guards\.language_weight"):
    RewardSpec.from_config(d)
  # Every key is required: the defaults live in configs/ only, so a missing one is named.
  d = reward_defaults.get_config().to_dict()
  del d["guards"]["empty_weight"]
  with pytest.raises(ConfigError, match=r"config\.reward\.guards\.empty_weight: missing"):
    RewardSpec.from_config(d)
  d = reward_defaults.get_config().to_dict()
  d["guards"]["length_hi"] = 50.0  # a length ratio: above 1 is allowed
  assert RewardSpec.from_config(d).guards.length_hi == 50.0
  d["guards"]["repetition_lo"] = -0.1
  with pytest.raises(ConfigError, match=r"config\.reward\.guards\.repetition_lo: -0\.1"):
    RewardSpec.from_config(d)
