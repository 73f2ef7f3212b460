"""The Grain training pipeline: target-language prompts joined with pivot references.

  examples (target-language questions) ──join on id──> pivot references (+ cached embeds)
      │ grain.DataLoader: IndexSampler (per-host shard, seeded shuffle, epochs)
      │ Map: user message + chat template + tokenise          (in worker processes)
      │ Batch: fixed per-host batch, left-pad to the smallest length bucket that fits
      ▼
  batch = {
    'ids', 'langs', 'questions', 'gold', 'reference', 'reference_reasoning',
    'reference_answer': lists of B strings ('' where a field is absent),
    'prompt_tokens': [B,P] int32 left-padded, 'prompt_valid': [B,P] bool,
    'prompt_lengths': [B] int32,
    'ref_emb': {'{encoder}/{field}': [B,E] float32},
    'group_size': G (int),
  }

GRPO groups: each prompt appears ONCE per batch and `group_size` G travels as metadata; the
sampler prefills the prompt once and draws G completions from the shared cache
(`pbrl_jax.sampling.sample(num_samples=G)`, rows i*G..i*G+G-1).

Batch shapes: B = global_batch_size // shard_count on every host; P is one of a few static
buckets, so a jitted step compiles at most len(buckets) times. With several hosts, each host
picks P from its own rows: a multi-host trainer agrees on max P across hosts and calls
`repad` (hosts' local batches must share one shape before
`jax.make_array_from_process_local_data`).

Checkpointing: the `DataLoader` iterator's `get_state()`/`set_state()` (JSON bytes), or inside
an Orbax checkpoint via `grain.checkpoint.CheckpointSave(iterator)` /
`grain.checkpoint.CheckpointRestore(iterator)` (one file per process).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import grain
import numpy as np
from absl import flags
from absl import logging

from pbrl_jax.data.pivot import Reference
from pbrl_jax.data.records import DataError, Example
from pbrl_jax.data.spec import DataSection
from pbrl_jax.data.tokenize import (DEFAULT_CHOICE_INSTRUCTION, DEFAULT_MATH_INSTRUCTION,
                                    HFTokenizer, Tokenizer, chat_text, user_message)
from pbrl_jax.padding import bucket_for, left_pad

MISSING_REFERENCE_CHOICES = ("error", "skip")
OVERLONG_CHOICES = ("error", "skip")


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
  """Validated pipeline settings (built from the `data` config section by the trainer).

  Attributes:
    global_batch_size: Prompts per step across all hosts (each prompt once; G samples each).
    group_size: G, completions per prompt (metadata for the sampler).
    buckets: Allowed left-padded prompt lengths.
    seed: Shuffle seed.
    shuffle: Shuffle globally each epoch.
    num_epochs: None repeats forever (training); an int stops after that many epochs.
    worker_count: Grain worker processes (0: in the calling process).
    worker_buffer_size: Batches each worker prepares ahead.
    missing_reference: 'error' (a prompt without a pivot reference names its id) or 'skip'.
    overlong: A prompt longer than the largest bucket: 'skip' (dropped before training starts,
      counted and logged with the first ids) or 'error' (a DataError naming the id).
    math_instruction: Instruction appended to math questions.
    choice_instruction: Instruction appended to multiple-choice questions.
    drop_remainder: Drop the last partial batch (always true for training: fixed shapes).
  """

  global_batch_size: int = 8
  group_size: int = 4
  buckets: tuple[int, ...] = (128, 256, 512, 1024)
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None
  worker_count: int = 0
  worker_buffer_size: int = 2
  missing_reference: str = "error"
  overlong: str = "skip"
  math_instruction: str = DEFAULT_MATH_INSTRUCTION
  choice_instruction: str = DEFAULT_CHOICE_INSTRUCTION
  drop_remainder: bool = True

  def __post_init__(self):
    if self.global_batch_size < 1 or self.group_size < 1:
      raise ValueError("global_batch_size and group_size must be >= 1")
    if not self.buckets or any(b < 1 for b in self.buckets):
      raise ValueError(f"buckets must be positive lengths, got {self.buckets}")
    if self.missing_reference not in MISSING_REFERENCE_CHOICES:
      raise ValueError(f"missing_reference must be one of {MISSING_REFERENCE_CHOICES}")
    if self.overlong not in OVERLONG_CHOICES:
      raise ValueError(f"overlong must be one of {OVERLONG_CHOICES}")
    if not 0 <= self.seed < 2**32:
      raise ValueError("seed must be a 32-bit non-negative integer (Grain's sampler)")

  @classmethod
  def from_config(cls, data: Any) -> "PipelineOptions":
    """From the `data` section (a ConfigDict or a validated `DataSection`)."""
    d = DataSection.from_config(data)
    return cls(global_batch_size=d.global_batch_size, group_size=d.group_size,
               buckets=d.buckets, seed=d.seed, shuffle=d.shuffle, num_epochs=None,
               worker_count=d.worker_count, worker_buffer_size=d.worker_buffer_size,
               missing_reference=d.missing_reference, overlong=d.overlong,
               math_instruction=d.math_instruction, choice_instruction=d.choice_instruction)


def join(examples: Sequence[Example], references: Mapping[str, Reference],
         missing_reference: str = "error") -> tuple[list[dict[str, Any]], dict[str, int]]:
  """Pairs each example with the pivot reference of the same id.

  Returns:
    (joined elements in example order, statistics {'joined', 'missing_reference'}).

  Raises:
    DataError: naming the first id without a reference when `missing_reference='error'`.
  """
  out, missing = [], []
  for ex in examples:
    ref = references.get(ex.id)
    if ref is None:
      if missing_reference == "error":
        raise DataError(f"no pivot reference for id {ex.id!r} (lang {ex.lang!r}); build the "
                        "references for this source or set missing_reference='skip'")
      missing.append(ex.id)
      continue
    out.append({
        "id": ex.id, "lang": ex.lang, "question": ex.question,
        "choices": list(ex.choices) if ex.choices else None,
        "gold": ex.answer if ex.answer is not None else (ref.gold or ""),
        "reference": ref.response, "reference_reasoning": ref.reasoning,
        "reference_answer": ref.answer or "",
        "ref_emb": {k: np.asarray(v, np.float32) for k, v in sorted(ref.embeddings.items())},
    })
  return out, {"joined": len(out), "missing_reference": len(missing)}


class JoinedSource:
  """Random-access source over joined elements (a Grain `RandomAccessDataSource`)."""

  def __init__(self, elements: Sequence[dict[str, Any]]):
    if not elements:
      raise DataError("the joined dataset is empty")
    self._elements = list(elements)

  def __len__(self) -> int:
    return len(self._elements)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._elements[index]

  def __repr__(self) -> str:
    # Grain logs the source repr; keep it short.
    return f"JoinedSource(len={len(self._elements)})"


class TokenizePrompt(grain.transforms.Map):
  """Builds the user message, applies the chat template and tokenises it."""

  def __init__(self, chat_tokenizer: Any, backend: Tokenizer, math_instruction: str,
               choice_instruction: str):
    self.chat_tokenizer = chat_tokenizer
    self.backend = backend
    self.math_instruction = math_instruction
    self.choice_instruction = choice_instruction

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    message = user_message(element["question"], element["choices"], self.math_instruction,
                           self.choice_instruction)
    ids = self.backend.encode([chat_text(self.chat_tokenizer, message)])[0]
    return {**element, "prompt_ids": np.asarray(ids, np.int32)}


class BucketBatch:
  """Grain batch function: stacks elements, left-padding prompts to the smallest bucket."""

  def __init__(self, buckets: Sequence[int], pad_id: int, group_size: int):
    self.buckets = tuple(sorted(buckets))
    self.pad_id = pad_id
    self.group_size = group_size

  def __call__(self, elements: Sequence[dict[str, Any]]) -> dict[str, Any]:
    lengths = [len(e["prompt_ids"]) for e in elements]
    longest = max(lengths)
    p = bucket_for(longest, self.buckets)
    if p is None:
      worst = elements[int(np.argmax(lengths))]
      raise DataError(f"prompt of id {worst['id']!r} (lang {worst['lang']!r}) has {longest} "
                      f"tokens, more than the largest length bucket {self.buckets[-1]}; add a "
                      "larger bucket to data.buckets")
    tokens, valid = left_pad([e["prompt_ids"] for e in elements], p, self.pad_id)
    keys = sorted(elements[0]["ref_emb"])
    for e in elements:
      if sorted(e["ref_emb"]) != keys:
        raise DataError(f"id {e['id']!r}: reference embeddings {sorted(e['ref_emb'])} differ "
                        f"from {keys}")
    return {
        "ids": [e["id"] for e in elements],
        "langs": [e["lang"] for e in elements],
        "questions": [e["question"] for e in elements],
        "gold": [e["gold"] for e in elements],
        "reference": [e["reference"] for e in elements],
        "reference_reasoning": [e["reference_reasoning"] for e in elements],
        "reference_answer": [e["reference_answer"] for e in elements],
        "prompt_tokens": tokens,
        "prompt_valid": valid,
        "prompt_lengths": np.asarray(lengths, np.int32),
        "ref_emb": {k: np.stack([e["ref_emb"][k] for e in elements]) for k in keys},
        "group_size": self.group_size,
    }


def repad(batch: dict[str, Any], length: int, pad_id: int) -> dict[str, Any]:
  """The batch with prompts left-padded to a longer `length` (for a cross-host agreed P)."""
  p = batch["prompt_tokens"].shape[1]
  if length < p:
    raise ValueError(f"cannot repad prompts of length {p} to a shorter {length}")
  extra = length - p
  tokens = np.pad(batch["prompt_tokens"], ((0, 0), (extra, 0)), constant_values=pad_id)
  valid = np.pad(batch["prompt_valid"], ((0, 0), (extra, 0)), constant_values=False)
  return {**batch, "prompt_tokens": tokens, "prompt_valid": valid}


def drop_overlong(elements: Sequence[dict[str, Any]], tokenizer: Any, options: PipelineOptions,
                  backend: Tokenizer | None = None
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Checks every prompt's length once, on the host, before any worker starts.

  Returns:
    (the elements whose prompt fits the largest bucket, {'overlong': count, 'max_length',
    'first_overlong': up to 5 (id, lang, length)}).

  Raises:
    DataError: naming the first overlong prompt's id, when `options.overlong == 'error'`.
  """
  backend = backend or HFTokenizer(tokenizer)
  limit = max(options.buckets)
  texts = [chat_text(tokenizer, user_message(e["question"], e["choices"],
                                             options.math_instruction,
                                             options.choice_instruction)) for e in elements]
  lengths = [len(ids) for ids in backend.encode(texts)]
  over = [(e["id"], e["lang"], n) for e, n in zip(elements, lengths) if n > limit]
  if over and options.overlong == "error":
    ex_id, lang, n = over[0]
    raise DataError(f"prompt of id {ex_id!r} (lang {lang!r}) has {n} tokens, more than the "
                    f"largest length bucket {limit} ({len(over)} prompts are too long); add a "
                    "larger bucket to data.buckets or set data.overlong='skip'")
  kept = [e for e, n in zip(elements, lengths) if n <= limit]
  return kept, {"overlong": len(over), "max_length": max(lengths, default=0),
                "first_overlong": over[:5]}


def make_loader(elements: Sequence[dict[str, Any]], tokenizer: Any, options: PipelineOptions,
                shard_index: int = 0, shard_count: int = 1,
                backend: Tokenizer | None = None) -> grain.DataLoader:
  """The training `grain.DataLoader` for one host.

  Args:
    elements: Joined elements (`join`), identical on every host.
    tokenizer: The policy's HF tokenizer (its chat template formats prompts).
    options: Pipeline settings.
    shard_index: This host's shard (`jax.process_index()` in training).
    shard_count: Number of hosts (`jax.process_count()`).
    backend: Tokenizer backend; default: `HFTokenizer(tokenizer)`.

  With a finite `num_epochs` and a record count not divisible by `shard_count`, Grain 0.2.18
  loses `len(elements) % shard_count` records per epoch (its per-host length is
  `len // shard_count` while the first hosts' shards hold one more); training repeats forever
  (`num_epochs=None`), where every record is still visited.

  Returns:
    A DataLoader; iterate it, and checkpoint its iterator's state.
  """
  if options.global_batch_size % shard_count:
    raise ValueError(f"global_batch_size {options.global_batch_size} is not divisible by "
                     f"{shard_count} hosts")
  if options.worker_count > 0 and not flags.FLAGS.is_parsed():
    # Grain's worker start-up reads its absl flags; outside an absl app (notebooks, pytest)
    # nobody parsed them, so take the defaults.
    flags.FLAGS.mark_as_parsed()
  backend = backend or HFTokenizer(tokenizer)
  elements, stats = drop_overlong(elements, tokenizer, options, backend)
  if stats["overlong"]:
    logging.warning("skipped %d prompts longer than the largest bucket %d (first: %s)",
                    stats["overlong"], max(options.buckets), stats["first_overlong"])
  source = JoinedSource(elements)
  shard = grain.sharding.ShardOptions(shard_index=shard_index, shard_count=shard_count,
                                      drop_remainder=False)
  sampler = grain.samplers.IndexSampler(num_records=len(source), shard_options=shard,
                                        shuffle=options.shuffle, num_epochs=options.num_epochs,
                                        seed=options.seed)
  ops = [
      TokenizePrompt(tokenizer, backend, options.math_instruction, options.choice_instruction),
      grain.transforms.Batch(batch_size=options.global_batch_size // shard_count,
                             drop_remainder=options.drop_remainder,
                             batch_fn=BucketBatch(options.buckets, backend.pad_id,
                                                  options.group_size)),
  ]
  return grain.DataLoader(data_source=source, sampler=sampler, operations=ops,
                          worker_count=options.worker_count,
                          worker_buffer_size=options.worker_buffer_size, shard_options=shard)
