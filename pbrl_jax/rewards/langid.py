"""Light language identification: Unicode script ranges plus stopword profiles.

Enough to tell whether a response is written in the language it was asked in: the script of
its letters settles non-Latin languages, and for Latin-script languages the share of frequent
function words of each language tells an English answer from a German one. Digits,
punctuation and math do not count as letters, so `3 + 5 = 8` is neutral.
"""

from __future__ import annotations

import bisect
import re

# (first code point, last code point, script); sorted, non-overlapping.
_RANGES = sorted([
    (0x0041, 0x005A, "Latin"), (0x0061, 0x007A, "Latin"), (0x00C0, 0x024F, "Latin"),
    (0x1E00, 0x1EFF, "Latin"), (0x0370, 0x03FF, "Greek"), (0x0400, 0x052F, "Cyrillic"),
    (0x0530, 0x058F, "Armenian"), (0x0590, 0x05FF, "Hebrew"), (0x0600, 0x06FF, "Arabic"),
    (0x0750, 0x077F, "Arabic"), (0x08A0, 0x08FF, "Arabic"), (0x0900, 0x097F, "Devanagari"),
    (0x0980, 0x09FF, "Bengali"), (0x0A00, 0x0A7F, "Gurmukhi"), (0x0A80, 0x0AFF, "Gujarati"),
    (0x0B80, 0x0BFF, "Tamil"), (0x0C00, 0x0C7F, "Telugu"), (0x0C80, 0x0CFF, "Kannada"),
    (0x0D00, 0x0D7F, "Malayalam"), (0x0E00, 0x0E7F, "Thai"), (0x10A0, 0x10FF, "Georgian"),
    (0x1100, 0x11FF, "Hangul"), (0x1200, 0x139F, "Ethiopic"), (0x3040, 0x309F, "Hiragana"),
    (0x30A0, 0x30FF, "Katakana"), (0x3130, 0x318F, "Hangul"), (0x3400, 0x4DBF, "Han"),
    (0x4E00, 0x9FFF, "Han"), (0xAC00, 0xD7AF, "Hangul"), (0xF900, 0xFAFF, "Han"),
    (0xFB50, 0xFDFF, "Arabic"), (0xFE70, 0xFEFF, "Arabic"), (0xFF21, 0xFF3A, "Latin"),
    (0xFF41, 0xFF5A, "Latin"), (0xFF66, 0xFF9F, "Katakana"), (0x20000, 0x2FA1F, "Han"),
])
_STARTS = [r[0] for r in _RANGES]

LANG_SCRIPTS: dict[str, frozenset[str]] = {
    "zh": frozenset({"Han"}), "ja": frozenset({"Han", "Hiragana", "Katakana"}),
    "ko": frozenset({"Hangul", "Han"}), "ru": frozenset({"Cyrillic"}),
    "uk": frozenset({"Cyrillic"}), "bg": frozenset({"Cyrillic"}), "sr": frozenset({"Cyrillic",
                                                                                  "Latin"}),
    "kk": frozenset({"Cyrillic"}), "be": frozenset({"Cyrillic"}), "mk": frozenset({"Cyrillic"}),
    "ar": frozenset({"Arabic"}), "fa": frozenset({"Arabic"}), "ur": frozenset({"Arabic"}),
    "hi": frozenset({"Devanagari"}), "mr": frozenset({"Devanagari"}),
    "ne": frozenset({"Devanagari"}), "bn": frozenset({"Bengali"}), "te": frozenset({"Telugu"}),
    "ta": frozenset({"Tamil"}), "kn": frozenset({"Kannada"}), "ml": frozenset({"Malayalam"}),
    "gu": frozenset({"Gujarati"}), "pa": frozenset({"Gurmukhi"}), "th": frozenset({"Thai"}),
    "el": frozenset({"Greek"}), "he": frozenset({"Hebrew"}), "ka": frozenset({"Georgian"}),
    "hy": frozenset({"Armenian"}), "am": frozenset({"Ethiopic"}),
}
LATIN = frozenset({"Latin"})

# Frequent function words; words shared by several languages count for each of them.
STOPWORDS: dict[str, frozenset[str]] = {k: frozenset(v.split()) for k, v in {
    "en": "the and is are of to in that it for with as was on be this by so we has have he she"
          " they there then from at an not which what how many each total more than will"
          " would",
    "de": "der die das und ist sind nicht ein eine einen zu den mit von sie es auf für dem des"
          " sich im auch als wir ich hat haben wie viele jeder insgesamt also dann noch oder"
          " aus bei nach",
    "fr": "le la les et est sont de des du un une pour dans que qui il elle ils ce avec sur pas"
          " au aux par combien chaque donc alors ou a en plus",
    "es": "el la los las y es son de del un una para en que por con se su al lo cuántos cada hay"
          " total entonces tiene más como pero",
    "it": "il lo la gli le e è sono di del della un una per che con non si al alla quanti"
          " ogni quindi ha dei anche come più",
    "pt": "o a os as e é são de do da dos das um uma para em que com não se ao no na quantos há"
          " cada então tem mais por como",
    "nl": "de het een en is zijn van in dat niet met voor op te hij zij er hoeveel elke dus"
          " heeft ook als naar",
    "pl": "i w na jest są nie że się z do to jak ile każdy więc ma od po dla przez tak",
    "tr": "ve bir bu da de için ile ne kaç her toplam yani var olan çok gibi daha sonra",
    "sw": "na ya wa kwa ni la za katika je kila hivyo ana hii kuwa",
    "id": "dan yang di ini itu dengan untuk dari adalah tidak ada berapa setiap jadi ke",
    "vi": "và là của có không một các những cho với được trong này bao nhiêu mỗi vậy",
    "ro": "și este sunt de la în un o cu pe pentru că nu care câte fiecare deci are",
}.items()}
_WORD_RE = re.compile(r"[^\W\d_]+", re.UNICODE)


def script_of(ch: str) -> str | None:
  o = ord(ch)
  i = bisect.bisect_right(_STARTS, o) - 1
  if i >= 0 and _RANGES[i][0] <= o <= _RANGES[i][1]:
    return _RANGES[i][2]
  return None


def script_counts(text: str) -> dict[str, int]:
  """Letters per script (characters outside the table, digits and punctuation ignored)."""
  counts: dict[str, int] = {}
  for ch in text:
    if ch.isalpha():
      s = script_of(ch) or "Other"
      counts[s] = counts.get(s, 0) + 1
  return counts


def _words(text: str) -> list[str]:
  return [w.lower() for w in _WORD_RE.findall(text)]


def stopword_hits(text: str) -> tuple[dict[str, int], int]:
  """(function-word hits per profiled language, number of words)."""
  words = _words(text)
  return _hits(words), len(words)


def _hits(words: list[str]) -> dict[str, int]:
  return {lang: sum(w in sw for w in words) for lang, sw in STOPWORDS.items()}


# Evidence needed before a text counts as written in some language: function-word hits of the
# leading Latin-script profile, or letters in the target's script for the other scripts.
MIN_STOPWORD_HITS = 2
MIN_SCRIPT_LETTERS = 4
_WIDE_SCRIPTS = ("Han", "Hiragana", "Katakana", "Hangul")


def _normalize_lang(lang: str) -> str:
  return lang.lower().replace("_", "-").split("-")[0]


def language_reading(text: str, lang: str | None) -> tuple[float, bool]:
  """(how much `text` looks written in `lang` in [0, 1], whether that could be told at all).

  A text the measure cannot place is *undetermined* and scores 0.0: no evidence earns no
  credit, so a reward gated on this measure never pays letterless or two-word answers (a
  policy under RL finds such answers within 20 steps when they pass). Callers report the
  undetermined share separately.

  script share: letters in the language's scripts / all letters. Fewer than
  MIN_SCRIPT_LETTERS letters: undetermined. Non-Latin languages are settled by the share
  (Japanese written in Han only counts half: that is Chinese). Latin-script languages with a
  stopword profile: the share times hits(lang) / max over profiled languages of hits; English
  leading on even one function word settles it ("The answer is 8." is English, not German);
  otherwise fewer than MIN_STOPWORD_HITS hits of the leader is undetermined. An unprofiled
  Latin language is penalised (x0.5) when the text is clearly English. An empty `lang` (no
  target) returns (1.0, True).
  """
  if not lang:
    return 1.0, True
  lang = _normalize_lang(lang)
  scripts = LANG_SCRIPTS.get(lang, LATIN)
  counts = script_counts(text)
  letters = sum(counts.values())
  # One CJK or Hangul character carries about what two Latin letters do ("答案是" is a phrase).
  weighted = letters + sum(counts.get(s, 0) for s in _WIDE_SCRIPTS)
  if weighted < MIN_SCRIPT_LETTERS:
    return 0.0, False
  share = sum(counts.get(s, 0) for s in scripts) / letters
  if lang == "ja" and counts.get("Han", 0) >= 8 and not (counts.get("Hiragana", 0)
                                                         + counts.get("Katakana", 0)):
    share *= 0.5  # all-Han text is Chinese, not Japanese
  if scripts is not LATIN or share == 0.0:
    return share, True
  words = _words(text)
  hits, n_words = _hits(words), len(words)
  best = max(hits.values())
  own = hits.get(lang, 0)
  if lang != "en" and hits["en"] >= 1 and hits["en"] > own and hits["en"] == best:
    # English leads: off-language however short. Words both profiles list ("is" in Dutch,
    # "in" in Italian) are no evidence for the target here.
    own_only = sum(w in STOPWORDS.get(lang, ()) and w not in STOPWORDS["en"] for w in words)
    return share * own_only / best, True
  if best < MIN_STOPWORD_HITS:
    return 0.0, False
  if lang in STOPWORDS:
    return share * own / best, True
  return share * (0.5 if hits["en"] == best and hits["en"] >= 0.15 * n_words else 1.0), True


def language_consistency(text: str, lang: str | None) -> float:
  """The score of `language_reading`: in [0, 1], 0.0 when undetermined."""
  return language_reading(text, lang)[0]


def is_consistent(score: float, threshold: float) -> bool:
  """The one definition of "written in the question's language", for training and eval."""
  return score >= threshold
