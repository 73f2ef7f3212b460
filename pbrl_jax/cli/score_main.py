"""pbrl-score: scores responses against pivot references with the config's reward.

  pbrl-score --config configs/demo.py --input pairs.jsonl --output scores.jsonl
  pbrl-score --config configs/demo.py --input pairs.jsonl --output scores.jsonl \\
      --config.reward.kind=embedding

Reads the config's `reward` section (configs/reward_defaults.py). Each input line is a JSON
object with `lang`, `response`, `reference` and optionally `question`, `answer` (gold),
`reference_answer` and `id`. Each output line holds `id` (the input's, else the line number),
the total `reward` and every component and guard value (names: `pbrl_jax/rewards/score.py`).
The output file is written atomically.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterator

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from pbrl_jax import fileio


def define_flags() -> None:
  """Defines this command's flags when it runs, so that importing the module defines none."""
  global _CONFIG, _INPUT, _OUTPUT, _BATCH
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                            lock_config=True)
  _INPUT = flags.DEFINE_string("input", None, "JSONL of {lang, response, reference, ...}.")
  _OUTPUT = flags.DEFINE_string("output", None, "JSONL of scores (written atomically).")
  fileio.refuse_remote("output")
  _BATCH = flags.DEFINE_integer("batch_size", 64, "Items scored per batch.")
  flags.mark_flags_as_required(["config", "input", "output"])

REQUIRED = ("lang", "response", "reference")
OPTIONAL_TEXT = ("question", "answer", "reference_answer", "gold")


class InputError(ValueError):
  """A malformed input line; the message names the file and the line number."""


def read_items(path: str) -> Iterator[dict[str, Any]]:
  """Validated items of a JSONL file; blank lines are skipped."""
  with open(path, encoding="utf-8", errors="surrogateescape") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise InputError(f"{path}:{number}: not valid JSON ({e.msg})") from None
      if not isinstance(obj, dict):
        raise InputError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
      for key in REQUIRED:
        if not isinstance(obj.get(key), str):
          raise InputError(f"{path}:{number}: field {key!r} is missing or not a string")
      for key in OPTIONAL_TEXT:
        if obj.get(key) is not None and not isinstance(obj[key], (str, int, float)):
          raise InputError(f"{path}:{number}: field {key!r} must be a string or a number")
      obj.setdefault("id", number)
      yield obj


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
  """NaN and infinities as null (strict JSON); the row's `nonfinite` list names them."""
  return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
          for k, v in row.items()}


def score_file(config: Any, input_path: str, output_path: str, batch_size: int = 64) -> int:
  """Scores every line of `input_path` into `output_path`; returns the number of lines."""
  from pbrl_jax import rewards  # pylint: disable=g-import-not-at-top

  if "reward" not in config:
    raise KeyError("config has no `reward` section (see configs/reward_defaults.py)")
  spec = rewards.RewardSpec.from_config(config.reward)
  items = list(read_items(input_path))  # every line is checked before any model loads
  models = rewards.load_reward_models(spec)
  rows = []
  for start in range(0, len(items), batch_size):
    batch = items[start:start + batch_size]
    for item, scores in zip(batch, rewards.score_batch(spec, models, batch)):
      rows.append({"id": item["id"], "lang": item["lang"], **scores})
    logging.info("scored %d / %d", len(rows), len(items))
  from pbrl_jax.fileio import atomic_write_jsonl  # pylint: disable=g-import-not-at-top
  atomic_write_jsonl(output_path, [_json_safe(r) for r in rows], allow_nan=False)
  return len(rows)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  n = score_file(_CONFIG.value, _INPUT.value, _OUTPUT.value, _BATCH.value)
  logging.info("wrote %d scores to %s", n, _OUTPUT.value)


def run():
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
