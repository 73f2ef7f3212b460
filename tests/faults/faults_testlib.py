"""Helpers of the fault-injection suite: CLI runs that can be killed, and their evidence.

Every trainer run here is a subprocess of `pbrl-train` on configs/tiny.py, exactly as a user
(or a preempted TPU VM) runs it. The runs of one session share a persistent XLA compilation
cache, so each restart compiles nothing new: that changes wall time only, not results.
"""

import glob
import os
import re
import subprocess
import sys
import time

# The trainer tests' helpers (tiny config, pivot build, CLI environment) are reused as is.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "train"))
import train_testlib as tl  # pylint: disable=g-import-not-at-top,wrong-import-position
from pbrl_jax import metrics as metrics_lib

REPO = tl.REPO
TMP_SUFFIX = ".orbax-checkpoint-tmp"


def fault_env(cache_dir: str, **extra: str) -> dict:
  env = tl.cli_env()
  env.update({
      "JAX_COMPILATION_CACHE_DIR": cache_dir,
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  })
  env.update(extra)
  return env


class Run:
  """One `pbrl-train` subprocess; output goes to files (a full pipe cannot block it)."""

  def __init__(self, workdir: str, flags, env: dict, tag: str):
    self.workdir = workdir
    self.out_path = os.path.join(os.path.dirname(workdir), f"{os.path.basename(workdir)}"
                                 f".{tag}.log")
    self._out = open(self.out_path, "w")
    self.proc = subprocess.Popen(tl.train_cmd(workdir, *flags), env=env, cwd=REPO,
                                 stdout=self._out, stderr=subprocess.STDOUT,
                                 start_new_session=True)

  def output(self) -> str:
    if not self._out.closed:
      self._out.flush()
    with open(self.out_path, encoding="utf-8", errors="replace") as f:
      return f.read()

  def wait(self, timeout: float) -> int:
    try:
      return self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.kill()
      raise AssertionError(f"run did not finish within {timeout:.0f}s:\n"
                           f"{self.output()[-4000:]}") from None
    finally:
      self._out.close()

  def kill(self) -> None:
    """SIGKILL, like a preempted VM: no handler, no flush, no checkpoint."""
    if self.proc.poll() is None:
      os.killpg(self.proc.pid, 9)
    self.proc.wait()

  def wait_until(self, predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if predicate():
        return
      if self.proc.poll() is not None:
        raise AssertionError(f"run exited (rc {self.proc.returncode}) before {what}:\n"
                             f"{self.output()[-4000:]}")
      time.sleep(0.05)
    self.kill()
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}:\n"
                         f"{self.output()[-4000:]}")


def metric_steps(workdir: str) -> list:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  steps = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      m = re.match(r'\{"step": (\d+),', line)
      if m and line.endswith("\n"):
        steps.append(int(m.group(1)))
  return steps


def read_metrics(workdir: str) -> list:
  return metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


comparable = tl.strip_times  # every key except wall times and resident memory


def finalized_steps(workdir: str) -> list:
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def temporary_dirs(workdir: str) -> list:
  return sorted(os.path.basename(p) for p in glob.glob(
      os.path.join(workdir, "checkpoints", f"*{TMP_SUFFIX}*")))


def resumed_from(output: str):
  m = re.search(r"resumed from step (\d+)", output)
  return int(m.group(1)) if m else None


def largest_array_file(step_dir: str) -> str:
  """The biggest OCDBT data file of a checkpoint's train state (`state/d/*`)."""
  files = glob.glob(os.path.join(step_dir, "state", "d", "*"))
  assert files, f"no array data files in {step_dir}/state/d"
  return max(files, key=os.path.getsize)


def python() -> str:
  return sys.executable


_SHARED: dict = {}


def shared_base(tmp_path_factory) -> dict:
  """One pivot build and one compilation cache for every fault test of the session."""
  if not _SHARED:
    root = tmp_path_factory.mktemp("faults")
    pivot = str(root / "pivot")
    tl.build_tiny_pivot(pivot)
    _SHARED.update(root=root, pivot=pivot, cache=str(root / "xla_cache"))
  return _SHARED


def workdir_with_pivot(base: dict, name: str) -> str:
  d = str(base["root"] / name)
  tl.copy_pivot(base["pivot"], d)
  return d
