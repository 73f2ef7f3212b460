"""Final answers in any language and script: extraction, reasoning/answer split, matching.

`extract_final_answer` looks, in this order, for `#### X` (GSM8K), `\\boxed{X}`, a localized
"the answer is" phrasing (en de fr es it pt ru zh ja ko ar th tr nl pl hi sw bn and others),
and finally the last number of the answer part. Digits of any script (Arabic-Indic, Devanagari,
Thai, full-width, ...) become ASCII; thousands separators (`,` `.` space, NBSP, narrow NBSP,
apostrophe, Arabic `٬`) and decimal commas are resolved with the language when given.
Numbers come back canonical (`"1234.5"`, `"42"`); multiple-choice letters A-J come back as
one upper-case letter.
"""

from __future__ import annotations

import math
import re
import unicodedata

from pbrl_jax.models.encoders.common import clean_text

# Languages that write decimals with a comma (and group thousands with '.' or a space).
DECIMAL_COMMA_LANGS = frozenset(
    "de fr es it pt ru pl nl tr id vi ro cs sk sl hr sr bg uk da no nb sv fi et lv lt hu el"
    " ca gl eu sq mk be kk az ka hy pt-br es-419 sw".split())

# "The answer is", localized; matched case-insensitively, the last occurrence wins.
ANSWER_PHRASES = (
    # en
    "the final answer is", "the correct answer is", "the answer is", "final answer:",
    "final answer", "answer:", "answer is",
    # de
    "die endgültige antwort ist", "die richtige antwort ist", "die antwort lautet",
    "die antwort ist", "antwort:", "ergebnis:", "lösung:",
    # fr
    "la réponse finale est", "la bonne réponse est", "la réponse est", "réponse finale :",
    "réponse :", "réponse:",
    # es
    "la respuesta final es", "la respuesta correcta es", "la respuesta es", "respuesta final:",
    "respuesta:",
    # it
    "la risposta finale è", "la risposta corretta è", "la risposta è", "risposta:",
    # pt
    "a resposta final é", "a resposta correta é", "a resposta é", "resposta final:",
    "resposta:",
    # nl
    "het juiste antwoord is", "het antwoord is", "antwoord:",
    # pl
    "prawidłowa odpowiedź to", "odpowiedź brzmi", "odpowiedź to", "odpowiedź:",
    # tr
    "doğru cevap", "cevap:", "cevap", "yanıt:", "sonuç:",
    # ru / uk
    "правильный ответ", "окончательный ответ", "ответ:", "ответ —", "ответ -", "ответ равен",
    "ответ", "відповідь:",
    # zh
    "最终答案是", "最终答案：", "最终答案:", "答案是", "答案为", "答案：", "答案:", "答：",
    # ja
    "最終的な答えは", "答えは", "答え：", "答え:", "正解は", "解答：", "解答:",
    # ko
    "최종 답은", "정답은", "답은", "정답:", "답:",
    # ar
    "الإجابة النهائية هي", "الإجابة الصحيحة هي", "الإجابة هي", "الإجابة:", "الجواب هو",
    "الجواب:",
    # th
    "คำตอบสุดท้ายคือ", "คำตอบคือ", "คำตอบ:", "ตอบ:",
    # hi / bn / sw / id / vi
    "अंतिम उत्तर", "उत्तर है", "उत्तर:", "উত্তর হল", "উত্তর:", "jibu ni", "jibu:",
    "jawabannya adalah", "jawaban:", "đáp án là", "đáp án:",
)


def _phrase_pattern(phrase: str) -> str:
  """A phrase that starts or ends with an alphabetic (Latin, Cyrillic) letter must not be
  glued to other letters ("ответил" is not "ответ"); CJK phrases may be ("答案是C")."""
  is_word = lambda ch: ch.isalpha() and ord(ch) < 0x0530
  pattern = re.escape(phrase)
  if is_word(phrase[0]):
    pattern = r"(?<![^\W\d_])" + pattern
  if is_word(phrase[-1]):
    pattern += r"(?![^\W\d_])"
  return pattern


_PHRASE_RE = re.compile("|".join(_phrase_pattern(p) for p in sorted(ANSWER_PHRASES, key=len,
                                                                     reverse=True)),
                        re.IGNORECASE)
_HASH_RE = re.compile(r"####\s*([^\n]*)")
_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)
_BOXED = "\\boxed{"
# A multiple-choice letter at the start of an answer tail: "(B)", "B.", "B", "**B**", "选项B".
_LETTER_RE = re.compile(r"^[\s:：\-—*(\[（【\"'`«“选项]*([A-J])(?![A-Za-z])")

_FRAC_RE = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_SPACES = "\u00a0\u202f\u2009\u2007"  # NBSP, narrow NBSP, thin and figure spaces
# Digits, with optional grouped thousands and one decimal part.
_NUMBER_RE = re.compile(
    r"(?<![\w.])[-+−]?(?:\d{1,3}(?:(?:[,.'’٬]|[ " + _SPACES + r"])\d{3})+|\d+)"
    r"(?:[.,٫]\d+)?(?:\s*/\s*\d+)?")
_TRANSLATE = {0x2212: "-", 0x066B: ".", 0x066C: ",", 0x3000: " ", 0xFF0C: ",", 0xFF0E: ".",
              0x3002: ". "}


def normalize_digits(text: str) -> str:
  """Digits of every script -> ASCII, full-width ASCII -> ASCII, Unicode minus -> '-'."""
  out = []
  for ch in text:
    o = ord(ch)
    if o < 128:
      out.append(ch)
    elif o in _TRANSLATE:
      out.append(_TRANSLATE[o])
    elif 0xFF01 <= o <= 0xFF5E:
      out.append(chr(o - 0xFEE0))
    elif ch.isdecimal():
      out.append(str(unicodedata.decimal(ch, 0)))
    else:
      out.append(ch)
  return "".join(out)


def parse_number(token: str, lang: str | None = None) -> float | None:
  """One number token (already ASCII digits) -> float, resolving separators by locale.

  Both ',' and '.': the last one is the decimal mark. One kind repeated: thousands. A single
  ',' is a decimal comma in decimal-comma languages, else thousands when exactly three digits
  follow. A single '.' with exactly three digits after a non-zero integer part is a thousands
  dot in decimal-comma languages. `a/b` is a fraction.
  """
  t = token.strip().replace("−", "-")
  if "/" in t:
    num, _, den = t.partition("/")
    a, b = parse_number(num, lang), parse_number(den, lang)
    return a / b if a is not None and b not in (None, 0.0) else None
  t = re.sub("[ '’" + _SPACES + "]", "", t).replace("٬", ",").replace("٫", ".")
  comma_lang = (lang or "").lower().split("-")[0] in DECIMAL_COMMA_LANGS
  if "," in t and "." in t:
    dec = "," if t.rfind(",") > t.rfind(".") else "."
    t = t.replace("." if dec == "," else ",", "").replace(",", ".")
  elif t.count(",") > 1:
    t = t.replace(",", "")
  elif "," in t:
    head, tail = t.split(",")
    thousands = len(tail) == 3 and not comma_lang and head.lstrip("+-") not in ("", "0")
    t = head + tail if thousands else head + "." + tail
  elif t.count(".") > 1:
    t = t.replace(".", "")
  elif "." in t:
    head, tail = t.split(".")
    if comma_lang and len(tail) == 3 and head.lstrip("+-") not in ("", "0"):
      t = head + tail
  try:
    value = float(t)
  except ValueError:
    return None
  return value if math.isfinite(value) else None


def format_number(value: float) -> str:
  """Canonical text of a number: integers without a decimal point, else up to 12 digits."""
  if value == int(value) and abs(value) < 1e15:
    return str(int(value))
  return f"{value:.12g}"


def _boxed_contents(text: str) -> list[str]:
  out = []
  start = text.find(_BOXED)
  while start != -1:
    i, depth = start + len(_BOXED), 1
    j = i
    while j < len(text) and depth:
      depth += {"{": 1, "}": -1}.get(text[j], 0)
      j += 1
    if depth == 0:
      out.append(text[i:j - 1])
    start = text.find(_BOXED, j if depth == 0 else i)
  return out


def _answer_from_tail(tail: str, lang: str | None, first: bool = True,
                      letters: bool = True) -> str | None:
  """A letter at the start of `tail` (when `letters`), else its first (or last) number."""
  tail = _FRAC_RE.sub(r"\1/\2", tail)
  tail = tail.replace("\\text{", "").replace("$", " ").replace("\\,", "").replace("{,}", ",")
  m = _LETTER_RE.match(tail) if letters else None
  if m:
    return m.group(1)
  numbers = _NUMBER_RE.findall(tail)
  for tok in (numbers if first else reversed(numbers)):
    value = parse_number(tok, lang)
    if value is not None:
      return format_number(value)
  return None


def split_reasoning_answer(text: str) -> tuple[str, str]:
  """Splits a response into (reasoning, final-answer part).

  `<think>...</think>` blocks (Qwen3) are the reasoning and what follows the last block is the
  answer (an unclosed `<think>` is all reasoning, no answer). Otherwise the answer starts at
  the last `####`, else at the last localized "the answer is" phrase, else at the line holding
  the last `\\boxed{`, else it is the last non-empty line (a one-line response is both).
  """
  text = clean_text(text)
  blocks = _THINK_RE.findall(text)
  if blocks:
    tail = text[text.lower().rfind("</think>") + len("</think>"):]
    return "\n".join(b.strip() for b in blocks), tail.strip()
  low = text.lower()
  if "<think>" in low:
    return text[low.rfind("<think>") + len("<think>"):].strip(), ""
  cut = text.rfind("####")
  if cut == -1:
    matches = list(_PHRASE_RE.finditer(text))
    if matches:
      cut = matches[-1].start()
  if cut == -1 and _BOXED in text:
    cut = text.rfind("\n", 0, text.rfind(_BOXED)) + 1
  if cut == -1:
    lines = [ln for ln in text.strip().split("\n") if ln.strip()]
    if len(lines) <= 1:
      return text.strip(), text.strip()
    return "\n".join(lines[:-1]).strip(), lines[-1].strip()
  return text[:cut].strip(), text[cut:].strip()


def extract_final_answer(text: str, lang: str | None = None) -> str | None:
  """The final answer of a response: a canonical number, a letter A-J, or None."""
  text = normalize_digits(clean_text(text))
  _, answer = split_reasoning_answer(text)
  hashes = _HASH_RE.findall(answer) or _HASH_RE.findall(text)
  if hashes:
    got = _answer_from_tail(hashes[-1], lang)
    if got is not None:
      return got
  for scope in (answer, text):
    boxed = _boxed_contents(scope)
    if boxed:
      got = _answer_from_tail(boxed[-1], lang)
      if got is not None:
        return got
    matches = list(_PHRASE_RE.finditer(scope))
    if matches:
      tail = scope[matches[-1].end():matches[-1].end() + 120].split("\n")[0]
      got = _answer_from_tail(tail, lang)
      if got is not None:
        return got
  return _answer_from_tail(answer, lang, first=False, letters=False)


def answers_match(a: str | None, b: str | None, rel_tol: float = 1e-4,
                  abs_tol: float = 1e-6) -> bool:
  """Canonical answers equal: letters exactly, numbers within a tolerance."""
  if a is None or b is None:
    return False
  if a.isalpha() or b.isalpha():
    return a.upper() == b.upper()
  try:
    return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=abs_tol)
  except ValueError:
    return False


def gold_answer(gold: str | float | int | None, lang: str | None = None) -> str | None:
  """A gold label (a bare number or letter, or a full solution) in canonical form."""
  if gold is None:
    return None
  if isinstance(gold, (int, float)):
    return format_number(float(gold)) if math.isfinite(float(gold)) else None
  text = normalize_digits(clean_text(gold)).strip()
  if len(text) == 1 and text.upper() in "ABCDEFGHIJ":
    return text.upper()
  return extract_final_answer(text, lang)


def verifiable_reward(response: str, gold: str | float | int | None,
                      lang: str | None = None, rel_tol: float = 1e-4) -> float:
  """RLVR reward: 1.0 when the response's final answer equals the gold answer, else 0.0."""
  return float(answers_match(extract_final_answer(response, lang), gold_answer(gold, lang),
                             rel_tol=rel_tol))


def final_answer_format(text: str, lang: str | None = None) -> float:
  """1.0 when `text` states exactly one final answer the parser can read, else 0.0.

  "Exactly one": a single `####` marker, followed on its line by a number or an option
  letter. Two markers (a policy hedging between answers) or a marker with nothing readable
  after it earn nothing.
  """
  text = normalize_digits(clean_text(text))
  marks = _HASH_RE.findall(text)
  if len(marks) != 1:
    return 0.0
  return float(_answer_from_tail(marks[0], lang) is not None)


def answer_closeness(answer: str | None, target: str | None) -> float:
  """How near a numeric answer is to the target, in [0, 1]: max(0, 1 - |a - t| / max(|t|, 1)).

  1.0 for equal numbers, falling linearly to 0 at a distance of |t| (or 1 for |t| < 1). Letters
  and unparseable answers are 1.0 when equal, else 0.0: a wrong option is not "near".
  """
  if answer is None or target is None:
    return 0.0
  try:
    a, t = float(answer), float(target)
  except ValueError:
    return float(answer.upper() == target.upper())
  if not (math.isfinite(a) and math.isfinite(t)):
    return 0.0
  return max(0.0, 1.0 - abs(a - t) / max(abs(t), 1.0))
