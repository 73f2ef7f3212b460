"""pbrl-compare, prompts (multilingual arithmetic, GSM-Symbolic style) and reward callables."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence


from pbrl_jax.rewards import answers

from pbrl_jax.compare.common import RewardFunc


# ---------------------------------------------------------------------------------------------
# Prompts: a fixed multilingual arithmetic set in the style of multilingual GSM-Symbolic.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One question, its gold answer and the English reference solution (the pivot answer)."""

  lang: str
  question: str
  answer: str
  reference: str


PROMPTS: tuple[Prompt, ...] = (
    Prompt("en", "Tom has 3 boxes with 4 apples in each box. How many apples does he have? "
           "End with '#### <number>'.", "12",
           "Each box has 4 apples and there are 3 boxes, so 3 * 4 = 12. #### 12"),
    Prompt("de", "Anna kauft 5 Hefte zu je 2 Euro. Wie viel Euro bezahlt sie? "
           "Schließe mit '#### <Zahl>'.", "10",
           "Each notebook costs 2 euros and she buys 5, so 5 * 2 = 10. #### 10"),
    Prompt("fr", "Paul a 20 billes et en donne 7 à sa sœur. Combien lui en reste-t-il ? "
           "Termine par '#### <nombre>'.", "13",
           "He starts with 20 marbles and gives away 7, so 20 - 7 = 13. #### 13"),
    Prompt("es", "Un tren recorre 60 km cada hora. ¿Cuántos km recorre en 3 horas? "
           "Termina con '#### <número>'.", "180",
           "The train travels 60 km per hour for 3 hours, so 60 * 3 = 180. #### 180"),
    Prompt("pt", "Maria tem 15 laranjas e compra mais 9. Quantas laranjas ela tem agora? "
           "Termine com '#### <número>'.", "24",
           "She has 15 oranges and buys 9 more, so 15 + 9 = 24. #### 24"),
    Prompt("ru", "В классе 28 учеников, их делят на 4 равные группы. Сколько учеников в "
           "каждой группе? Закончи ответ строкой '#### <число>'.", "7",
           "28 students in 4 equal groups gives 28 / 4 = 7 per group. #### 7"),
    Prompt("zh", "小明有 8 支铅笔，又买了 6 支，然后送给朋友 5 支。他现在有几支铅笔？"
           "最后写 '#### <数字>'。", "9",
           "He has 8 pencils, buys 6 (14), then gives away 5, so 14 - 5 = 9. #### 9"),
    Prompt("ja", "りんごが 1 箱に 12 個入っています。5 箱では全部で何個ですか？"
           "最後に '#### <数字>' と書いてください。", "60",
           "There are 12 apples in each of 5 boxes, so 12 * 5 = 60. #### 60"),
)


def select_prompts(n: int) -> list[Prompt]:
  """The first `n` prompts of PROMPTS, cycled when n exceeds the list."""
  if n < 1:
    raise ValueError(f"need at least one prompt, got {n}")
  return [PROMPTS[i % len(PROMPTS)] for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Rewards as plain Python callables: what TRL calls, and what our loop calls.
# ---------------------------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
  """TRL passes conversational completions as [{'role': 'assistant', 'content': ...}]."""
  if isinstance(completion, str):
    return completion
  if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], Mapping):
    return str(completion[-1].get("content", ""))
  return str(completion)


def verifiable_reward_func(prompts: Sequence[Any], completions: Sequence[Any], *,
                           answer: Sequence[str], lang: Sequence[str] | None = None,
                           **unused: Any) -> list[float]:
  """1.0 when a completion's final answer equals the gold answer, else 0.0 (TRL signature)."""
  del prompts, unused
  langs = lang if lang is not None else [None] * len(completions)
  return [answers.verifiable_reward(completion_text(c), a, l)
          for c, a, l in zip(completions, answer, langs)]


def make_semantic_reward_func(spec: Any, models: Any | None = None) -> RewardFunc:
  """Adapts `pbrl_jax.rewards.score_batch` to TRL's `reward_func(prompts, completions, **kw)`.

  The dataset columns `lang`, `reference` (English pivot answer), `answer` (gold) and
  `question` reach the callable as keyword lists, one entry per completion.

  Args:
    spec: a `pbrl_jax.rewards.RewardSpec`.
    models: loaded reward models; None loads them from the spec.

  Returns:
    The callable; its `__name__` is `semantic_<kind>` (TRL logs rewards under that name).
  """
  from pbrl_jax import rewards  # the encoders are only needed on this path

  if models is None:
    models = rewards.load_reward_models(spec)

  def reward_func(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
                  ) -> list[float]:
    n = len(completions)
    col = lambda k: columns.get(k) or [None] * n
    items = [{"lang": l, "response": completion_text(c), "reference": r, "answer": a,
              "question": q}
             for c, l, r, a, q in zip(completions, col("lang"), col("reference"),
                                      col("answer"), col("question"))]
    return [float(row["reward"]) for row in rewards.score_batch(spec, models, items)]

  reward_func.__name__ = f"semantic_{spec.kind}"
  return reward_func
