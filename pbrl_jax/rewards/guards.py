"""Guards against reward hacking, applied to every semantic reward.

Each guard measures one thing and turns it into a gate in [0, 1]:

- language: `language_reading(response, lang)` in [0,1] (0 when the text cannot be placed:
  letterless or nearly wordless answers are *undetermined*, reported as such, never paid as
  the target language); gate ramps from 0 at `lo` to 1 at `hi`. `language_consistent` is
  the measure at or above `hi` (the definition evaluation uses too).
- copy: share of the response's letter 6-grams found in the reference, and in the question,
  [0,1] each; per source a gate ramping from 1 at `lo` to 0 at `hi` (the question has its own,
  higher pair); the smaller gate counts.
- length: response / reference length in script-weighted characters, [0, 1e6]; gate 1 inside
  [lo, hi], ratio/lo below, hi/ratio above.
- repetition: max(repeated character 8-grams share, zlib squeeze), [0,1]; gate ramps from 1
  at `lo` to 0 at `hi`.
- empty: 1.0 when the response has no letter or digit, else 0.0; gate 1 - empty.

Gates combine multiplicatively, each softened by its weight w in [0,1]:
`gate = prod_g (1 - w_g * (1 - gate_g))`, and the reward is `base * gate`. Multiplication (not a
penalty sum) means no hack can be paid for by a high similarity: an English answer to a German
question scores 0 however close its meaning is to the English reference.
"""

from __future__ import annotations

import dataclasses
import re
import zlib

from pbrl_jax.rewards import langid

_NON_LETTERS = re.compile(r"[\W\d_]+", re.UNICODE)
_WIDE_SCRIPTS = {"Han": 3.0, "Hiragana": 2.0, "Katakana": 2.0, "Hangul": 2.5}
COPY_N = 6
REPEAT_N = 8
# Texts shorter than this are too short to call a repetition loop.
REPEAT_MIN_CHARS = 64


@dataclasses.dataclass(frozen=True)
class GuardThresholds:
  """Guard thresholds and weights (formulas: the module docstring). No defaults here: the
  values, and why, are in configs/reward_defaults.py; `RewardSpec.from_config` checks them."""

  language_lo: float
  language_hi: float
  language_weight: float
  copy_lo: float  # overlap with the reference
  copy_hi: float
  copy_question_lo: float  # overlap with the question (an honest answer restates it)
  copy_question_hi: float
  copy_weight: float
  length_lo: float
  length_hi: float
  length_weight: float
  repetition_lo: float
  repetition_hi: float
  repetition_weight: float
  empty_weight: float


def ramp_up(x: float, lo: float, hi: float) -> float:
  """0 at or below lo, 1 at or above hi, linear in between."""
  if hi <= lo:
    return float(x >= hi)
  return min(max((x - lo) / (hi - lo), 0.0), 1.0)


def letters_only(text: str) -> str:
  """Lower-cased letters with single spaces between runs; digits and symbols dropped."""
  return _NON_LETTERS.sub(" ", text.lower()).strip()


def _ngrams(text: str, n: int) -> list[str]:
  return [text[i:i + n] for i in range(max(len(text) - n + 1, 0))]


def copy_overlap(response: str, source: str, n: int = COPY_N) -> float:
  """Share of the response's letter n-grams that also occur in `source`, in [0,1].

  Letters only, so shared numbers and formulas (`3 + 5 = 8`) do not count as copying.
  """
  grams = _ngrams(letters_only(response), n)
  if not grams or not source:
    return 0.0
  pool = set(_ngrams(letters_only(source), n))
  return sum(g in pool for g in grams) / len(grams)


def weighted_length(text: str) -> float:
  """Characters, with CJK and Hangul weighted up (one such character ~ 2-3 Latin ones)."""
  total = 0.0
  for ch in text:
    if ch.isspace():
      continue
    total += _WIDE_SCRIPTS.get(langid.script_of(ch) or "", 1.0) if ord(ch) > 0x2FFF else 1.0
  return total


def repetition(text: str) -> float:
  """Degeneracy in [0,1]: 0 for varied text, near 1 for a loop."""
  t = " ".join(text.split())
  if len(t) < REPEAT_MIN_CHARS:
    return 0.0
  grams = _ngrams(t, REPEAT_N)
  distinct = 1.0 - len(set(grams)) / len(grams)
  raw = t.encode("utf-8", errors="replace")
  # zlib squeezes a loop far below natural text (~0.4-0.6 at these lengths).
  squeeze = 1.0 - min(len(zlib.compress(raw, 6)) / len(raw) / 0.4, 1.0)
  return min(max(distinct, squeeze), 1.0)


def is_empty(text: str) -> float:
  return 0.0 if any(ch.isalnum() for ch in text) else 1.0


def guard_values(response: str, reference: str, question: str, lang: str | None,
                 th: GuardThresholds) -> dict[str, float]:
  """Every guard measure, its gate and the combined gate (see the module docstring)."""
  empty = is_empty(response)
  lang_c, determined = langid.language_reading(response, lang)
  copy_ref = copy_overlap(response, reference)
  copy_q = copy_overlap(response, question)
  ref_len = weighted_length(reference)
  ratio = weighted_length(response) / ref_len if ref_len > 0 else 1.0
  rep = repetition(response)

  if ratio < th.length_lo:
    length_gate = ratio / th.length_lo
  elif ratio > th.length_hi:
    length_gate = th.length_hi / ratio
  else:
    length_gate = 1.0
  gates = {
      "gate_language": ramp_up(lang_c, th.language_lo, th.language_hi),
      "gate_copy": 1.0 - max(ramp_up(copy_ref, th.copy_lo, th.copy_hi),
                             ramp_up(copy_q, th.copy_question_lo, th.copy_question_hi)),
      "gate_length": length_gate,
      "gate_repetition": 1.0 - ramp_up(rep, th.repetition_lo, th.repetition_hi),
      "gate_empty": 1.0 - empty,
  }
  weights = {"gate_language": th.language_weight, "gate_copy": th.copy_weight,
             "gate_length": th.length_weight, "gate_repetition": th.repetition_weight,
             "gate_empty": th.empty_weight}
  gate = 1.0
  for k, g in gates.items():
    gate *= 1.0 - weights[k] * (1.0 - g)
  return {"language_consistency": lang_c, "language_undetermined": float(not determined),
          "language_consistent": float(langid.is_consistent(lang_c, th.language_hi)),
          "copy_reference": copy_ref, "copy_question": copy_q,
          "length_ratio": min(ratio, 1e6), "repetition": rep, "empty": empty, **gates,
          "gate": gate}
