"""The `data` and `pivot` config sections, validated once into frozen typed dataclasses.

Built by `config_schema.build`, like every other section: an unknown, missing or mistyped
key is a `ConfigError` naming the dotted key. The values, and why, live in
configs/data_defaults.py only. Whether the files a section names exist and parse is checked
where they are read (`sources.load_source`, `pivot.build_references`), with errors that name
the file and the line.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pbrl_jax.config_schema import ConfigError, build, require_at_least_one

OnError = Literal["raise", "skip"]


@dataclasses.dataclass(frozen=True)
class GsmSymbolicSection:
  """config.data.gsm_symbolic: how the parallel instances are drawn (`data.gsm_symbolic`)."""

  instances_per_template: int
  seed: int
  templates: tuple[int, ...] | None  # None: every template of each language
  time_budget_s: float
  max_attempts: int
  english_trials: int


@dataclasses.dataclass(frozen=True)
class DataSection:
  """config.data: which questions, and how the training pipeline batches them."""

  source: Literal["gsm_symbolic", "mgsm", "mmlu_prox", "jsonl"]
  path: str
  langs: tuple[str, ...]
  on_error: OnError
  missing_reference: Literal["error", "skip"]
  gsm_symbolic: GsmSymbolicSection
  global_batch_size: int
  group_size: int
  buckets: tuple[int, ...]
  overlong: Literal["error", "skip"]
  shuffle: bool
  seed: int
  worker_count: int
  worker_buffer_size: int
  math_instruction: str
  choice_instruction: str

  @classmethod
  def from_config(cls, cd: Any, key: str = "config.data") -> "DataSection":
    """The section (a ConfigDict, or a section built before), checked."""
    s = build(cls, cd, key)
    # Batch shape, buckets and seed are checked by `PipelineOptions`, which the trainer
    # builds from this section (and tests and benchmarks build directly).
    if s.worker_count < 0:
      raise ConfigError(f"{key}.worker_count: must be >= 0, got {s.worker_count}")
    if s.source != "gsm_symbolic" and not s.path:
      raise ConfigError(f"{key}.path: source {s.source!r} reads a file; set its path")
    require_at_least_one(s.gsm_symbolic, ("instances_per_template", "max_attempts",
                                           "english_trials"), f"{key}.gsm_symbolic")
    return s


@dataclasses.dataclass(frozen=True)
class PivotSection:
  """config.pivot: how `pbrl-pivot` builds and embeds the English references."""

  model: str  # '' for the embedded SmolLM2-135M
  prompt_template: str
  max_new_tokens: int
  temperature: float
  batch_size: int
  filter_correct: bool
  encoders: tuple[str, ...]
  embed_fields: tuple[Literal["response", "reasoning", "answer"], ...]
  shard_size: int
  on_error: OnError
  wait_for_hosts_s: float

  @classmethod
  def from_config(cls, cd: Any, key: str = "config.pivot") -> "PivotSection":
    """The section (a ConfigDict, or a section built before), checked."""
    s = build(cls, cd, key)
    require_at_least_one(s, ("max_new_tokens", "batch_size", "shard_size"), key)
    if s.temperature < 0:
      raise ConfigError(f"{key}.temperature: must be >= 0 (0 is greedy), got {s.temperature}")
    if "{question}" not in s.prompt_template:
      raise ConfigError(f"{key}.prompt_template: must contain '{{question}}'")
    return s
