"""Host-side reward scoring: `score_batch(spec, models, items) -> list[dict]`.

Each item is a mapping with `lang`, `response`, `reference` (the English pivot response) and
optionally `question`, `reference_answer` (the pivot's final answer; else extracted from the
reference), `answer` or `gold` (the gold answer) and `reference_embeddings` (cached by the
pivot step: `{'full': [E], 'reasoning': [E], 'answer': [E]}` from `reference_embeddings`;
segments missing there are embedded here) and `response_embeddings` (the policy side, same
keys, when the trainer's scoring jit already computed them from `segments(response, lang)`).
An item may also carry `parsed`, the `Parsed` response (`parse(response, lang)`), when the
caller already split it: every text is parsed once per scoring (`score_batch` parses each
response once for both halves; the trainer parses each completion once for the scoring jit
and the reward), and each English reference once per process (`parse_reference`).

Output keys (stable; ranges in brackets):
  reward [0,1]            base * gate (for 'verifiable': base, gated only when asked)
  base [0,1]              the reward of the kind before guards:
                            hybrid     alpha * answer_precision + format_weight * format
                                       + (1 - alpha - format_weight) * reasoning_coherence
                            embedding  similarity
                            mt         mt_similarity
                            verifiable verifiable
  gate [0,1] and every guard measure and gate (see `guards.py`): language_consistency,
    copy_reference, copy_question, length_ratio [0,1e6], repetition, empty, gate_language,
    gate_copy, gate_length, gate_repetition, gate_empty
  answer_match {0,1}      policy final answer == reference final answer (numeric tolerance)
  answer_closeness [0,1]  1 - |policy - reference| / max(|reference|, 1), floored at 0
  format {0,1}            exactly one readable '#### <answer>' line
  language_undetermined {0,1}, language_consistent {0,1}  (see `guards.py`)
  has_reference_answer {0,1}, has_gold {0,1}
  verifiable {0,1}        policy final answer == gold (0 without a gold answer)
  policy_answer, reference_answer (strings, '' when none was found)
  nonfinite               names of the terms that came out NaN or infinite ([] normally);
                          when any, reward is NaN (never silently 0)
  with an encoder (every kind but 'verifiable'):
    cos_full, cos_reasoning, cos_answer [-1,1]  raw cosines of the `segments`: full text,
                               reasoning, final answer (canonical when found, else the
                               answer part)
    similarity [0,1]           calibrated cosine of the full texts
    reasoning_coherence [0,1]  calibrated cosine of the reasonings (or their MT similarity
                               when coherence='mt'; 0 when either reasoning is empty)
    answer_precision [0,1]     'graded': 1 on an exact match, else partial_credit *
                               answer_closeness (when the reference has a final answer);
                               'match': answer_match; for both, the calibrated cosine of
                               the answer segments when the reference has no final answer;
                               'comet':
                               the estimator's score of the answer segments, clipped to [0,1]
  with MT (kind 'mt', or hybrid with coherence='mt'):
    mt_similarity [0,1]        translated response (or reasoning) vs reference (or reasoning),
                               by calibrated English-encoder cosine or chrF; 0 without
                               translating when the guards' gate is already 0
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import numpy as np

from pbrl_jax.rewards import answers, comet, guards, mt, similarity
from pbrl_jax.rewards.encoders import TextEncoder, load_encoder
from pbrl_jax.rewards.spec import RewardSpec

SEGMENTS = ("full", "reasoning", "answer")
# The pivot step's name of each segment's cached embedding (`data.pivot.EMBED_FIELDS`).
SEGMENT_FIELDS = {"full": "response", "reasoning": "reasoning", "answer": "answer"}


@dataclasses.dataclass
class RewardModels:
  """The loaded models a spec needs (None where the spec needs none)."""

  encoder: TextEncoder | None = None
  mt: mt.MTBackend | None = None
  mt_encoder: TextEncoder | None = None
  comet: comet.CometEstimator | None = None


def load_reward_models(spec: RewardSpec) -> RewardModels:
  encoder = load_encoder(spec.encoder) if spec.uses_encoder else None
  models = RewardModels(encoder=encoder)
  if spec.uses_mt:
    models.mt = mt.load_mt_backend(spec.mt_backend)
    if spec.mt_metric == "cosine":
      same = not spec.mt_encoder or spec.mt_encoder == spec.encoder
      models.mt_encoder = encoder if same else load_encoder(spec.mt_encoder)
  if spec.answer_precision == "comet" and spec.uses_encoder:
    models.comet = comet.load_comet_estimator(spec.comet_path, spec.comet_activation,
                                              spec.comet_final_activation)
  return models


@dataclasses.dataclass(frozen=True)
class Parsed:
  """A response (or reference) as the reward reads it."""

  full: str
  reasoning: str
  answer_part: str  # what follows the reasoning (`answers.split_reasoning_answer`)
  final: str | None  # the canonical final answer ("8", "B"), None when there is none

  def segments(self) -> dict[str, str]:
    """The texts that get embedded, by `SEGMENTS` name.

    'answer' is the canonical final answer when one is found, as the pivot step stores it,
    else the answer part of the text.
    """
    return {"full": self.full, "reasoning": self.reasoning,
            "answer": self.final or self.answer_part}


def parse(text: str, lang: str | None = None) -> Parsed:
  """`text` split into reasoning and answer part, with its final answer in `lang`."""
  reasoning, answer_part = answers.split_reasoning_answer(text)
  return Parsed(text, reasoning, answer_part, answers.extract_final_answer(text, lang))


@functools.lru_cache(maxsize=65536)
def parse_reference(text: str) -> Parsed:
  """An English pivot reference, parsed once per process (they recur every epoch)."""
  return parse(text, "en")


def segments(text: str, lang: str | None = None) -> dict[str, str]:
  """The texts that get embedded: `parse(text, lang).segments()`."""
  return parse(text, lang).segments()


def with_parsed(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Copies of `items`, each with its response's `Parsed` (kept where already given)."""
  out = []
  for it, lang in zip(items, _langs(items)):
    parsed = it.get("parsed")
    if parsed is None:
      parsed = parse(_text(it, "response"), lang)
    elif parsed.full != _text(it, "response"):
      raise ValueError("an item's `parsed` is not its response's")
    out.append({**it, "parsed": parsed})
  return out


def reference_embeddings(encoder: TextEncoder, references: Sequence[str],
                         batch_size: int = 64) -> dict[str, np.ndarray]:
  """Cache for the pivot step: {'full','reasoning','answer'} -> [N,E] float32 (`segments`)."""
  segs = [parse_reference(r).segments() for r in references]
  flat = [s[k] for k in SEGMENTS for s in segs]
  emb = encoder.encode(flat, batch_size).reshape(len(SEGMENTS), len(references), -1)
  return {k: emb[i] for i, k in enumerate(SEGMENTS)}


def _clamp(x: Any, lo: float, hi: float) -> float:
  """`x` clamped into [lo, hi]; NaN for a non-finite `x`, which must stay visible.

  A NaN term makes the row's reward NaN and is listed in `nonfinite`: the trainer's
  non-finite guard then skips and counts the update, and `pbrl-score` marks the line,
  instead of a broken encoder passing as a reward of 0.
  """
  x = float(x)
  return min(max(x, lo), hi) if math.isfinite(x) else math.nan


def _text(item: Mapping[str, Any], key: str) -> str:
  v = item.get(key)
  return "" if v is None else str(v)


def score_batch(spec: RewardSpec, models: RewardModels | TextEncoder,
                items: Sequence[Mapping[str, Any]], batch_size: int = 64) -> list[dict[str, Any]]:
  """Scores a batch of responses against their pivot references (see the module docstring)."""
  items = with_parsed(items)  # parsed once for both halves
  rows = text_scores(spec, models, items, batch_size)
  return finish_scores(spec, models, items, rows, batch_size)


def text_scores(spec: RewardSpec, models: RewardModels | TextEncoder,
                items: Sequence[Mapping[str, Any]], batch_size: int = 64
                ) -> list[dict[str, Any]]:
  """The first half of `score_batch`: what needs no policy-side embedding.

  Final answers, guards, and for MT rewards the translations and their similarity. The
  trainer runs this on the host while its scoring jit (which embeds the policy side) is still
  running on the devices; `finish_scores` then adds the embedding terms and the reward.
  """
  if not isinstance(models, RewardModels):
    models = RewardModels(encoder=models)
  items = with_parsed(items)
  langs = _langs(items)
  responses = [_text(it, "response") for it in items]
  references = [_text(it, "reference") for it in items]
  questions = [_text(it, "question") for it in items]
  out: list[dict[str, Any]] = []
  for i, it in enumerate(items):
    pol = it["parsed"].final
    ref_given = it.get("reference_answer")
    ref = (answers.gold_answer(ref_given, "en") if ref_given not in (None, "")
           else parse_reference(references[i]).final)
    gold_raw = it.get("gold", it.get("answer"))
    gold = answers.gold_answer(gold_raw, langs[i]) if gold_raw not in (None, "") else None
    row = {
        "policy_answer": pol or "", "reference_answer": ref or "",
        "answer_match": float(answers.answers_match(pol, ref, spec.numeric_rel_tol)),
        "answer_closeness": answers.answer_closeness(pol, ref),
        "format": answers.final_answer_format(responses[i], langs[i]),
        "has_reference_answer": float(ref is not None), "has_gold": float(gold is not None),
        "verifiable": float(answers.answers_match(pol, gold, spec.numeric_rel_tol)),
    }
    row.update(guards.guard_values(responses[i], references[i], questions[i], langs[i],
                                   spec.guards))
    out.append(row)

  if spec.uses_mt and out:
    seg = "full" if spec.kind == "mt" else "reasoning"
    if models.mt is None:
      raise ValueError("MT rewards need RewardModels.mt")
    for lang in sorted({lang or "en" for lang in langs}):  # a data/config mismatch, always
      if not models.mt.supports(lang, "en"):
        raise ValueError(f"mt backend {models.mt.name}: cannot translate {lang!r} into English")
    # Translation is the slow part; a response its guards already zero is not translated.
    live = [i for i, row in enumerate(out) if row["gate"] > 0.0]
    mt_sim = [0.0] * len(out)
    got = _mt_similarity(spec, models, [langs[i] for i in live],
                         [items[i]["parsed"].segments()[seg] for i in live],
                         [parse_reference(references[i]).segments()[seg] for i in live],
                         batch_size) if live else []
    for i, v in zip(live, got):
      mt_sim[i] = v
    for row, v in zip(out, mt_sim):
      row["mt_similarity"] = _clamp(v, 0.0, 1.0)
  return out


def finish_scores(spec: RewardSpec, models: RewardModels | TextEncoder,
                  items: Sequence[Mapping[str, Any]], rows: list[dict[str, Any]],
                  batch_size: int = 64) -> list[dict[str, Any]]:
  """The second half of `score_batch`: embedding terms and the reward, into `rows` (returned).

  `rows` is `text_scores(spec, models, items)`; items may now carry `response_embeddings`.
  """
  if not isinstance(models, RewardModels):
    models = RewardModels(encoder=models)
  if len(rows) != len(items):
    raise ValueError(f"{len(rows)} text scores for {len(items)} items")
  if not rows:
    return rows
  items = with_parsed(items)
  resp_segs = [it["parsed"].segments() for it in items]
  ref_segs = [parse_reference(_text(it, "reference")).segments() for it in items]
  if spec.uses_encoder:
    _embedding_components(spec, models, items, resp_segs, ref_segs, rows, batch_size)
  if spec.uses_mt and spec.kind == "hybrid":
    for row in rows:  # coherence='mt': the translation replaces the reasonings' cosine
      row["reasoning_coherence"] = row["mt_similarity"]

  for row in rows:
    if spec.kind == "hybrid":
      base = (spec.alpha * row["answer_precision"] + spec.format_weight * row["format"]
              + (1 - spec.alpha - spec.format_weight) * row["reasoning_coherence"])
    elif spec.kind == "embedding":
      base = row["similarity"]
    elif spec.kind == "mt":
      base = row["mt_similarity"]
    else:
      base = row["verifiable"]
    gated = spec.kind != "verifiable" or spec.apply_guards_to_verifiable
    row["base"] = _clamp(base, 0.0, 1.0)
    row["reward"] = _clamp(base * (row["gate"] if gated else 1.0), 0.0, 1.0)
    row["nonfinite"] = sorted(k for k, v in row.items()
                              if isinstance(v, float) and not math.isfinite(v))
    if row["nonfinite"]:
      row["reward"] = math.nan  # even where a zero gate would have hidden the bad term
  return rows


def _langs(items: Sequence[Mapping[str, Any]]) -> list[str | None]:
  return [(_text(it, "lang").strip().lower() or None) for it in items]


def _embedding_components(spec: RewardSpec, models: RewardModels,
                          items: Sequence[Mapping[str, Any]], resp_segs: list[dict[str, str]],
                          ref_segs: list[dict[str, str]], out: list[dict[str, Any]],
                          batch_size: int) -> None:
  enc = models.encoder
  if enc is None:
    raise ValueError(f"reward kind {spec.kind!r} needs an encoder; RewardModels.encoder is None")
  n = len(items)
  lo, hi = enc.calibration
  given = [it.get("response_embeddings") for it in items]
  if all(g is not None for g in given):
    # The trainer's scoring jit already embedded the policy side beside the policy.
    pol = {k: np.stack([np.asarray(g[k], np.float32) for g in given]) for k in SEGMENTS}
  else:
    emb = enc.encode([s[k] for k in SEGMENTS for s in resp_segs], batch_size)
    pol = {k: emb[i * n:(i + 1) * n] for i, k in enumerate(SEGMENTS)}
  cached = [it.get("reference_embeddings") or {} for it in items]
  ref = {}
  for k in SEGMENTS:
    if all(k in c for c in cached):
      ref[k] = np.stack([np.asarray(c[k], np.float32) for c in cached])
    else:  # segments the pivot step did not cache are embedded here
      ref[k] = enc.encode([s[k] for s in ref_segs], batch_size)
    if ref[k].shape[-1] != enc.dim:
      raise ValueError(f"cached reference embeddings ({k}) have dim {ref[k].shape[-1]}, the"
                       f" encoder {enc.name} has {enc.dim}")
  cos = {k: similarity.np_cosine(pol[k], ref[k]) for k in SEGMENTS}
  comet_scores = None
  if spec.answer_precision == "comet":
    if models.comet is None:
      raise ValueError("answer_precision 'comet' needs RewardModels.comet")
    comet_scores = comet.estimator_scores(models.comet, pol["answer"], ref["answer"])
  for i, row in enumerate(out):
    for k in SEGMENTS:
      row[f"cos_{k}"] = _clamp(cos[k][i], -1.0, 1.0)
    row["similarity"] = _clamp(similarity.np_calibrate(cos["full"][i], lo, hi), 0.0, 1.0)
    has_reasoning = bool(resp_segs[i]["reasoning"].strip() and ref_segs[i]["reasoning"].strip())
    coherence = similarity.np_calibrate(cos["reasoning"][i], lo, hi) if has_reasoning else 0.0
    row["reasoning_coherence"] = _clamp(coherence, 0.0, 1.0)
    if comet_scores is not None:
      precision = comet_scores[i]
    elif row["has_reference_answer"] and spec.answer_precision == "graded":
      precision = (1.0 if row["answer_match"] else
                   spec.partial_credit * row["answer_closeness"])
    elif row["has_reference_answer"]:
      precision = row["answer_match"]
    else:
      precision = similarity.np_calibrate(cos["answer"][i], lo, hi)
    row["answer_precision"] = _clamp(precision, 0.0, 1.0)


def _mt_similarity(spec: RewardSpec, models: RewardModels, langs: Sequence[str | None],
                   texts: Sequence[str], refs: Sequence[str], batch_size: int) -> list[float]:
  backend = models.mt
  translated = [""] * len(texts)
  by_lang: dict[str, list[int]] = {}
  for i, lang in enumerate(langs):
    by_lang.setdefault(lang or "en", []).append(i)
  for lang, idx in by_lang.items():
    for i, t in zip(idx, backend.translate([texts[i] for i in idx], lang, "en")):
      translated[i] = t
  if spec.mt_metric == "chrf":
    return [similarity.chrf(h, r) for h, r in zip(translated, refs)]
  enc = models.mt_encoder
  if enc is None:
    raise ValueError("mt_metric 'cosine' needs RewardModels.mt_encoder")
  a = enc.encode(translated, batch_size)
  b = enc.encode(list(refs), batch_size)
  lo, hi = enc.calibration
  sims = similarity.np_calibrate(similarity.np_cosine(a, b), lo, hi)
  return [float(s) if t.strip() else 0.0 for s, t in zip(sims, translated)]
