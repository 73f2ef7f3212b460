"""Readers for question files in their published layouts: generic JSONL, MGSM TSV, MMLU-ProX.

Each reader returns a list of `Example`s and reports bad lines through an `ErrorCounter`
(raise `DataError` naming file, line and field, or count a skip).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Sequence

from pbrl_jax.data.records import (DataError, ErrorCounter, Example, normalise_lang,
                                   read_text_lines, where)

_NUMBER_RE = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$")
MMLU_LETTERS = "ABCDEFGHIJ"


def canonical_number(text: str) -> str:
  """Canonical text of a number: no thousands commas, no trailing '.0'; ValueError if none.

  '1,000' -> '1000', '18.50' -> '18.5', '-3' -> '-3'.
  """
  s = text.strip()
  if not _NUMBER_RE.match(s):
    raise ValueError(f"not a number: {text!r}")
  try:
    d = Decimal(s.replace(",", ""))
  except InvalidOperation as e:
    raise ValueError(f"not a number: {text!r}") from e
  if d == d.to_integral_value():
    return str(int(d))
  return format(d.normalize(), "f")


def _check_str(value: Any, path: str, line: int, field: str, errors: ErrorCounter,
               allow_empty: bool = False) -> bool:
  if not isinstance(value, str):
    errors(f"{where(path, line, field)}: expected a string, got {type(value).__name__}",
           "wrong_type")
    return False
  if not allow_empty and not value.strip():
    errors(f"{where(path, line, field)}: empty", "empty_field")
    return False
  return True


def _lang(value: Any, path: str, line: int, field: str, errors: ErrorCounter) -> str | None:
  if not _check_str(value, path, line, field, errors):
    return None
  try:
    return normalise_lang(value)
  except ValueError:
    errors(f"{where(path, line, field)}: unknown language code {value!r}", "unknown_lang")
    return None


def read_jsonl_objects(path: str | os.PathLike[str],
                       errors: ErrorCounter) -> list[tuple[int, dict[str, Any]]]:
  """(line number, object) for each non-blank line of a JSONL file; bad JSON is reported."""
  path = os.fspath(path)
  out = []
  for i, line in read_text_lines(path, errors):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      errors(f"{where(path, i)}: malformed JSON ({e.msg} at column {e.colno})", "bad_json")
      continue
    if not isinstance(obj, dict):
      errors(f"{where(path, i)}: expected a JSON object, got {type(obj).__name__}", "wrong_type")
      continue
    out.append((i, obj))
  return out


def _check_unique(examples: list[Example], lines: list[int], path: str,
                  errors: ErrorCounter) -> list[Example]:
  seen: dict[tuple[str, str], int] = {}
  out = []
  for ex, ln in zip(examples, lines):
    key = (ex.id, ex.lang)
    if key in seen:
      errors(f"{where(path, ln, 'id')}: duplicate id {ex.id!r} for lang {ex.lang!r} "
             f"(first on line {seen[key]})", "duplicate_id")
      continue
    seen[key] = ln
    out.append(ex)
  return out


def read_jsonl(path: str | os.PathLike[str], on_error: str = "raise",
               errors: ErrorCounter | None = None) -> list[Example]:
  """Reads generic question JSONL: `id`, `lang`, `question`, optional `answer`, `choices`.

  Args:
    path: The JSONL file.
    on_error: 'raise' or 'skip' (used when `errors` is None).
    errors: Counter collecting skips across several files.

  Returns:
    The examples in file order.
  """
  path = os.fspath(path)
  errors = errors or ErrorCounter(on_error)
  examples, lines = [], []
  for i, obj in read_jsonl_objects(path, errors):
    missing = [k for k in ("id", "lang", "question") if k not in obj]
    if missing:
      errors(f"{where(path, i, missing[0])}: missing field", "missing_field")
      continue
    ex_id = obj["id"]
    if isinstance(ex_id, int) and not isinstance(ex_id, bool):
      ex_id = str(ex_id)
    if not _check_str(ex_id, path, i, "id", errors):
      continue
    if not _check_str(obj["question"], path, i, "question", errors):
      continue
    lang = _lang(obj["lang"], path, i, "lang", errors)
    if lang is None:
      continue
    answer = obj.get("answer")
    if answer is not None:
      if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        try:
          answer = canonical_number(f"{answer:.12f}".rstrip("0").rstrip(".")) if isinstance(
              answer, float) else str(answer)
        except ValueError:
          errors(f"{where(path, i, 'answer')}: not a finite number: {answer!r}", "bad_answer")
          continue
      elif not _check_str(answer, path, i, "answer", errors):
        continue
    choices = obj.get("choices")
    if choices is not None:
      if (not isinstance(choices, list) or not choices
          or not all(isinstance(c, str) for c in choices)):
        errors(f"{where(path, i, 'choices')}: expected a non-empty list of strings",
               "wrong_type")
        continue
      choices = tuple(choices)
    examples.append(Example(ex_id, lang, obj["question"], answer, choices))
    lines.append(i)
  return _check_unique(examples, lines, path, errors)


def mgsm_path(directory: str | os.PathLike[str], lang: str) -> str:
  """MGSM's published file name for one language: `mgsm_{lang}.tsv`."""
  return os.path.join(os.fspath(directory), f"mgsm_{lang}.tsv")


def read_mgsm_tsv(path: str | os.PathLike[str], lang: str, on_error: str = "raise",
                  errors: ErrorCounter | None = None, id_prefix: str = "mgsm") -> list[Example]:
  """Reads one MGSM file: `question<TAB>answer number` per line, no header.

  MGSM is parallel across languages line by line, so the id is `{id_prefix}/{line index}`
  (0-based, counting data lines), the same for every language.

  Args:
    path: `mgsm_{lang}.tsv`.
    lang: The file's language code.
    on_error: 'raise' or 'skip' (used when `errors` is None).
    errors: Counter collecting skips across several files.
    id_prefix: Prefix of the ids.

  Returns:
    The examples in file order.
  """
  path = os.fspath(path)
  errors = errors or ErrorCounter(on_error)
  lang = normalise_lang(lang)
  out = []
  index = 0
  for i, line in read_text_lines(path, errors):
    if not line.strip():
      continue
    this = index
    index += 1  # a skipped line still uses its index, so ids stay parallel across languages
    parts = line.split("\t")
    if len(parts) != 2:
      errors(f"{where(path, i)}: expected 2 tab-separated columns (question, answer), "
             f"got {len(parts)}", "bad_columns")
      continue
    question, answer = parts
    if not question.strip():
      errors(f"{where(path, i, 'question')}: empty", "empty_field")
      continue
    try:
      answer = canonical_number(answer)
    except ValueError:
      errors(f"{where(path, i, 'answer')}: not a number: {answer!r}", "bad_answer")
      continue
    out.append(Example(f"{id_prefix}/{this}", lang, question.strip(), answer))
  return out


MMLU_PROX_OPTION_COLUMNS = tuple(f"option_{k}" for k in range(10))


def _mmlu_row(row: dict[str, Any], path: str, line: int, lang: str,
              errors: ErrorCounter) -> Example | None:
  missing = [k for k in ("question_id", "question", "answer", *MMLU_PROX_OPTION_COLUMNS)
             if k not in row]
  if missing:
    errors(f"{where(path, line, missing[0])}: missing field", "missing_field")
    return None
  qid = row["question_id"]
  if isinstance(qid, int) and not isinstance(qid, bool):
    qid = str(qid)
  if not _check_str(qid, path, line, "question_id", errors):
    return None
  if not _check_str(row["question"], path, line, "question", errors):
    return None
  choices = []
  for col in MMLU_PROX_OPTION_COLUMNS:
    v = row[col]
    if v is None or (isinstance(v, str) and v.strip() in ("", "N/A")):
      continue  # questions with fewer than 10 options leave the rest empty
    if not isinstance(v, str):
      errors(f"{where(path, line, col)}: expected a string, got {type(v).__name__}",
             "wrong_type")
      return None
    choices.append(v)
  if len(choices) < 2:
    errors(f"{where(path, line, 'option_0')}: fewer than 2 options", "bad_choices")
    return None
  letter = row["answer"]
  if not isinstance(letter, str) or letter.strip() not in MMLU_LETTERS[:len(choices)]:
    errors(f"{where(path, line, 'answer')}: expected a letter A-{MMLU_LETTERS[len(choices)-1]},"
           f" got {letter!r}", "bad_answer")
    return None
  letter = letter.strip()
  if "answer_index" in row and row["answer_index"] not in (None, ""):
    try:
      idx = int(row["answer_index"])
    except (TypeError, ValueError):
      idx = -1
    if idx != MMLU_LETTERS.index(letter):
      errors(f"{where(path, line, 'answer_index')}: {row['answer_index']!r} disagrees with "
             f"answer {letter!r}", "bad_answer")
      return None
  return Example(f"mmlu_prox/{qid}", lang, row["question"], letter, tuple(choices))


def read_mmlu_prox(path: str | os.PathLike[str], lang: str, on_error: str = "raise",
                   errors: ErrorCounter | None = None) -> list[Example]:
  """Reads one MMLU-ProX language file in its published columns, as CSV (with header) or JSONL.

  Columns: `question_id`, `question`, `option_0`..`option_9`, `answer` (letter),
  `answer_index`, and others we ignore (`cot_content`, `category`, `src`, ...). Empty or 'N/A'
  options are dropped. The id is `mmlu_prox/{question_id}`, the same across languages.

  Args:
    path: A `.csv` or `.jsonl` file.
    lang: The file's language code.
    on_error: 'raise' or 'skip' (used when `errors` is None).
    errors: Counter collecting skips across several files.

  Returns:
    The examples in file order.
  """
  path = os.fspath(path)
  errors = errors or ErrorCounter(on_error)
  lang = normalise_lang(lang)
  examples, lines = [], []
  if path.endswith(".jsonl"):
    rows = read_jsonl_objects(path, errors)
  elif path.endswith(".csv"):
    text_lines = list(read_text_lines(path, errors))
    # csv needs the text back; a bad-UTF-8 line was already reported (and dropped if skipping).
    buf = io.StringIO("\n".join(line for _, line in text_lines))
    reader = csv.DictReader(buf)
    rows = []
    header = reader.fieldnames or []
    if "question" not in header:
      raise DataError(f"{where(path, 1)}: header lacks the 'question' column (got {header})")
    for row in reader:
      # DictReader counts physical lines; a quoted field may span several.
      line_no = text_lines[min(reader.line_num, len(text_lines)) - 1][0]
      if None in row:
        errors(f"{where(path, line_no)}: more columns than the header", "bad_columns")
        continue
      rows.append((line_no, row))
  else:
    raise DataError(f"{where(path)}: MMLU-ProX files must be .csv or .jsonl")
  for i, row in rows:
    ex = _mmlu_row(row, path, i, lang, errors)
    if ex is not None:
      examples.append(ex)
      lines.append(i)
  return _check_unique(examples, lines, path, errors)


def format_choices(question: str, choices: Sequence[str]) -> str:
  """The question followed by lettered options, one a line."""
  opts = "\n".join(f"{MMLU_LETTERS[k]}. {c}" for k, c in enumerate(choices))
  return f"{question}\n{opts}"


# ---------------------------------------------------------------------------------------------
# One reader for every file-based dataset kind (training sources and evaluation datasets).
# ---------------------------------------------------------------------------------------------

FILE_KINDS = ("mgsm", "mmlu_prox", "jsonl")


def dataset_file(kind: str, path: str, lang: str) -> str:
  """The file that holds language `lang` of a dataset in its published layout.

  'mgsm': `path/mgsm_{lang}.tsv`; 'mmlu_prox': `path` with a `{lang}` placeholder, or a
  directory holding `{lang}.jsonl` or `{lang}.csv`; 'jsonl': `path` itself (every language).
  """
  if kind == "mgsm":
    return mgsm_path(path, lang)
  if kind == "mmlu_prox":
    if "{lang}" in path:
      return path.format(lang=lang)
    for ext in (".jsonl", ".csv"):
      candidate = os.path.join(path, lang + ext)
      if os.path.isfile(candidate):
        return candidate
    return os.path.join(path, lang + ".csv")
  if kind == "jsonl":
    return path
  raise DataError(f"dataset kind {kind!r} is not one of {FILE_KINDS}")


def mgsm_languages(directory: str) -> list[str]:
  """The languages of an MGSM directory, from its `mgsm_{lang}.tsv` file names."""
  names = sorted(f for f in os.listdir(directory) if f.startswith("mgsm_") and f.endswith(".tsv"))
  return [normalise_lang(f[len("mgsm_"):-len(".tsv")]) for f in names]


def read_dataset(kind: str, path: str, langs: Sequence[str],
                 errors: ErrorCounter | None = None) -> dict[str, list[Example]]:
  """The examples of `langs` (every language there is when empty), by language.

  A missing file is a `DataError` naming it and its language; bad lines go to `errors`.
  'mmlu_prox' needs explicit languages (its files are not named consistently enough to list).
  """
  errors = errors or ErrorCounter("raise")
  langs = [normalise_lang(x) for x in langs]
  if kind == "jsonl":
    if not os.path.isfile(path):
      raise DataError(f"{path}: no such question JSONL")
    by_lang: dict[str, list[Example]] = {}
    for ex in read_jsonl(path, errors=errors):
      if not langs or ex.lang in langs:
        by_lang.setdefault(ex.lang, []).append(ex)
    return by_lang
  if not langs:
    if kind != "mgsm":
      raise DataError(f"dataset kind {kind!r} at {path}: name its languages")
    langs = mgsm_languages(path)
    if not langs:
      raise DataError(f"{path}: no mgsm_<lang>.tsv files")
  read = read_mgsm_tsv if kind == "mgsm" else read_mmlu_prox
  out = {}
  for lang in langs:
    file = dataset_file(kind, path, lang)
    if not os.path.isfile(file):
      name = {"mgsm": "MGSM", "mmlu_prox": "MMLU-ProX"}[kind]
      raise DataError(f"{file}: missing {name} file for language {lang!r}")
    out[lang] = read(file, lang, errors=errors)
  return out
