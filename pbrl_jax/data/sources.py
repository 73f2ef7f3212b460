"""Data sources by name: the target-language questions and the English pivot questions.

`config.data.source` picks one:
  'gsm_symbolic'  multilingual-gsm-symbolic, parallel instances generated once and cached as
                  JSONL in `<workdir>/cache` (`pbrl_jax.data.gsm_symbolic`);
  'mgsm'          `{data.path}/mgsm_{lang}.tsv` (MGSM's published layout), English in
                  `mgsm_en.tsv`;
  'mmlu_prox'     `data.path` with a `{lang}` placeholder, e.g. `dir/mmlu_prox_{lang}.csv`
                  (or `.jsonl`), or a directory of `{lang}.csv` / `{lang}.jsonl` files, in
                  MMLU-ProX's published columns;
  'jsonl'         one generic JSONL at `data.path` holding every language; English rows are
                  the pivot questions.
The file kinds are read by `readers.read_dataset`, the reader evaluation datasets use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Sequence

from absl import logging

from pbrl_jax.data import gsm_symbolic, readers
from pbrl_jax.data.pivot import PivotItem, file_sha256, items_sha256
from pbrl_jax.data.records import DataError, ErrorCounter, Example, normalise_lang
from pbrl_jax.data.spec import DataSection

PIVOT_LANG = "en"


@dataclasses.dataclass(frozen=True)
class SourceData:
  """What a source provides.

  Attributes:
    targets: Target-language questions (the policy's prompts), sorted by (lang, id).
    pivot: English questions the pivot answers, one per id, with gold answers when known.
    description: Human-readable source description, recorded in the manifest.
    sha256: Hash of the source files (or of the generated content), recorded in the manifest.
    stats: Skips and alignment statistics.
    oracle: For gsm_symbolic, the parallel instances (their English solutions are the oracle
      pivot); else empty.
  """

  targets: list[Example]
  pivot: list[PivotItem]
  description: str
  sha256: str
  stats: dict[str, Any]
  oracle: list[gsm_symbolic.ParallelInstance] = dataclasses.field(default_factory=list)


def _langs(data: Any) -> list[str]:
  langs = []
  for code in data.langs:
    try:
      langs.append(normalise_lang(code))
    except ValueError as e:
      raise DataError(f"config data.langs: {e}") from e
  return langs


def _hash_files(paths: Sequence[str]) -> str:
  h = hashlib.sha256()
  for p in paths:
    h.update(os.path.basename(p).encode() + b"\0" + file_sha256(p).encode() + b"\n")
  return h.hexdigest()


def _pivot_from_examples(english: Sequence[Example]) -> list[PivotItem]:
  items = []
  for ex in english:
    q = readers.format_choices(ex.question, ex.choices) if ex.choices else ex.question
    items.append(PivotItem(ex.id, q, None, ex.answer))
  return items


def load_source(data: Any, workdir: str) -> SourceData:
  """Loads the source named by `data.source` (see the module docstring).

  Args:
    data: The `data` config section (a ConfigDict, validated here, or a `DataSection`).
    workdir: Where caches live (gsm_symbolic).

  Returns:
    The targets, the pivot questions and their provenance.
  """
  data = DataSection.from_config(data)
  langs = _langs(data)
  errors = ErrorCounter(data.on_error)
  if data.source == "gsm_symbolic":
    g = data.gsm_symbolic
    insts, stats = gsm_symbolic.load_or_build(
        gsm_symbolic.cache_dir(workdir), langs, g.instances_per_template, g.seed,
        None if g.templates is None else list(g.templates), g.time_budget_s, g.max_attempts,
        g.english_trials)
    if not insts:
      raise DataError(f"gsm_symbolic: no aligned instances for {langs}: {stats}")
    targets = [i.example() for i in insts]
    english = gsm_symbolic.english_questions(insts)
    pivot = [PivotItem(e.id, e.question, None, e.answer) for e in english]
    desc = (f"multilingual-gsm-symbolic=={gsm_symbolic.package_version()} langs={langs} "
            f"instances_per_template={g.instances_per_template} seed={g.seed}")
    return SourceData(targets, pivot, desc, items_sha256(pivot), {"alignment": stats}, insts)
  # The file kinds: one reader (`readers.read_dataset`), the one evaluation uses too.
  wanted = [] if data.source == "jsonl" else [PIVOT_LANG, *langs]
  by_lang = readers.read_dataset(data.source, data.path, wanted, errors)
  files = list(dict.fromkeys(readers.dataset_file(data.source, data.path, lang)
                             for lang in wanted)) or [data.path]
  english = sorted(by_lang.get(PIVOT_LANG, []), key=lambda e: e.id)
  if not english:
    raise DataError(f"{data.source} at {data.path}: no English ('en') questions for the pivot")
  targets = sorted((ex for lang in langs if lang != PIVOT_LANG for ex in by_lang.get(lang, [])),
                   key=lambda e: (e.lang, e.id))
  if PIVOT_LANG in langs:
    targets = sorted(targets + english, key=lambda e: (e.lang, e.id))
  if errors.total_skipped:
    logging.warning("%s: skipped %d bad lines: %s", data.source, errors.total_skipped,
                    errors.summary())
  return SourceData(targets, _pivot_from_examples(english),
                    f"{data.source}:{data.path} langs={langs}", _hash_files(files),
                    {"errors": errors.summary()})
