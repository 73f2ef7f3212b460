"""Run metrics: one JSON line per step (process 0), TensorBoard events, and a progress bar.

`metrics.jsonl` is appended one complete line at a time and flushed (in a bucket: rewritten
whole, `fileio.AppendLog`), so a killed run leaves only whole lines; on resume, lines past the
restored step are dropped so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np

from pbrl_jax import fileio


# Rollout completions, a few per step, for the report's sample table.
SAMPLES_FILE = "samples.jsonl"


def _to_python(value: Any) -> Any:
  if isinstance(value, (np.ndarray, jax.Array)):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  return value


def truncate_jsonl(path: str, last_step: int) -> None:
  """Keeps only lines with step <= last_step (atomic rewrite)."""
  if not fileio.exists(path):
    return
  keep = []
  # Split on "\n" only: a completion may hold U+2028, which str.splitlines also splits on.
  for line in fileio.read_text(path).split("\n"):
    if not line:
      continue
    try:
      if json.loads(line)["step"] <= last_step:
        keep.append(line + "\n")
    except (json.JSONDecodeError, KeyError):
      continue  # a line cut by a kill: dropped
  fileio.atomic_write(path, "".join(keep))


def read_jsonl(path: str) -> list[dict[str, Any]]:
  return [json.loads(line) for line in fileio.read_text(path).split("\n") if line.strip()]


class MetricWriter:
  """Writes scalar metrics to `workdir/metrics.jsonl` and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str, *, resume_step: int = 0, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.samples_path = os.path.join(workdir, SAMPLES_FILE)
    self._tb = None
    if not self.active:
      return
    fileio.makedirs(workdir)
    truncate_jsonl(self.path, resume_step)
    truncate_jsonl(self.samples_path, resume_step)
    self._file = fileio.AppendLog(self.path)
    self._samples = fileio.AppendLog(self.samples_path)
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Writes one step, non-finite values included.

    What a non-finite loss means for the run is the trainer's one policy
    (`max_nonfinite_in_row`: the update is skipped and counted, too many in a row stop it),
    not the writer's.
    """
    record = {"step": int(step)}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    if not self.active:
      return
    self._file.write(json.dumps(record, ensure_ascii=False, allow_nan=True) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(k, v, step)

  def write_samples(self, step: int, samples: Sequence[Mapping[str, Any]]) -> None:
    """Appends rollout completions of one step to `samples.jsonl` (one object each)."""
    if not self.active:
      return
    for sample in samples:
      record = {"step": int(step), **{k: _to_python(v) for k, v in sample.items()}}
      self._samples.write(json.dumps(record, ensure_ascii=False, allow_nan=True) + "\n")
    self._samples.flush()

  def write_text(self, step: int, tag: str, text: str) -> None:
    if self.active and self._tb is not None:
      self._tb.add_text(tag, text, step)

  def close(self) -> None:
    if not self.active:
      return
    self._file.close()
    self._samples.close()
    if self._tb is not None:
      self._tb.close()


class StepTimer:
  """Accumulates wall time per phase of a step (rollout, host text, scoring, update...)."""

  def __init__(self):
    self.times: dict[str, float] = {}
    self._start: dict[str, float] = {}

  def start(self, name: str) -> None:
    self._start[name] = time.perf_counter()

  def stop(self, name: str) -> None:
    self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - self._start.pop(name)

  @contextlib.contextmanager
  def span(self, name: str) -> Iterator[None]:
    """Times the body of a `with` block under `name`."""
    self.start(name)
    try:
      yield
    finally:
      self.stop(name)

  def pop(self) -> dict[str, float]:
    out = {f"time/{k}": v for k, v in self.times.items()}
    self.times = {}
    return out
