"""Prompt text and tokenisation for the policy: chat template, tokenizer backends, left padding.

The policy sees one user turn: the question (with lettered options for multiple choice) and an
instruction asking for a parseable final line `#### <answer>`, wrapped by the policy tokenizer's
chat template with a generation prompt. The templated text is encoded without adding special
tokens again, exactly as `pbrl_jax.sampling.encode_prompts` does, so pipeline prompts and the
sampler's own prompts tokenise identically.

Backends:
  `HFTokenizer`: a transformers (fast) tokenizer; the default and the reference.
  `TfTextSentencePiece`: tensorflow-text's SentencePiece op on a SentencePiece model proto,
    behind the optional `tf` extra (TensorFlow is imported only when this class is built).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from pbrl_jax.data.readers import format_choices

# Our default instructions (not the paper's: its prompts are not public). They ask for the
# final-answer line that `pbrl_jax.rewards.extract_final_answer` parses first.
DEFAULT_MATH_INSTRUCTION = ("Solve the problem step by step. Write the final answer as a number "
                            "on the last line, in the form '#### <number>'.")
DEFAULT_CHOICE_INSTRUCTION = ("Think step by step, then write the letter of the correct option "
                              "on the last line, in the form '#### <letter>'.")


class Tokenizer(Protocol):
  """What the pipeline needs from a tokenizer backend."""

  pad_id: int

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added."""
    ...


def user_message(question: str, choices: Sequence[str] | None = None,
                 math_instruction: str = DEFAULT_MATH_INSTRUCTION,
                 choice_instruction: str = DEFAULT_CHOICE_INSTRUCTION) -> str:
  """The user turn for one question."""
  if choices:
    return f"{format_choices(question, choices)}\n\n{choice_instruction}"
  return f"{question}\n\n{math_instruction}"


def chat_text(hf_tokenizer: Any, message: str) -> str:
  """`message` as one user turn under the tokenizer's chat template, with generation prompt."""
  if not getattr(hf_tokenizer, "chat_template", None):
    raise ValueError("the policy tokenizer has no chat template")
  return hf_tokenizer.apply_chat_template([{"role": "user", "content": message}],
                                          add_generation_prompt=True, tokenize=False)


class HFTokenizer:
  """A transformers tokenizer as a pipeline backend (picklable for Grain worker processes)."""

  def __init__(self, tokenizer: Any, pad_id: int | None = None):
    self.tokenizer = tokenizer
    if pad_id is None:
      pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
          tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0)
    self.pad_id = int(pad_id)

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    return [list(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


class TfTextSentencePiece:
  """tensorflow-text SentencePiece tokenizer over a serialized SentencePiece model."""

  def __init__(self, model_proto: bytes, pad_id: int = 0):
    import tensorflow_text  # pylint: disable=g-import-not-at-top
    self._model_proto = model_proto
    self._tok = tensorflow_text.SentencePieceTokenizer(model=model_proto)
    self.pad_id = pad_id

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    ragged = self._tok.tokenize(list(texts))
    return [list(map(int, row)) for row in ragged.to_list()]

  def __reduce__(self):
    # TensorFlow ops do not pickle; rebuild from the model proto in each worker.
    return (TfTextSentencePiece, (self._model_proto, self.pad_id))
