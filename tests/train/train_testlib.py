"""Shared helpers of the trainer tests: tiny configs, one pivot build per session."""

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "configs", "tiny.py")


def tiny_config(arg: str = "grpo", **overrides):
  sys.path.insert(0, REPO)
  from configs import tiny  # pylint: disable=g-import-not-at-top
  c = tiny.get_config(arg)
  for key, value in overrides.items():
    node = c
    parts = key.split(".")
    for p in parts[:-1]:
      node = node[p]
    node[parts[-1]] = value
  return c


def build_tiny_pivot(workdir: str) -> None:
  """Oracle pivot references for configs/tiny.py in `workdir` (in process).

  Built once per test run in PBRL_TEST_SHARED_DIR (tests/conftest.py; a lock serialises the
  pytest-xdist workers, the first builds into a temp dir renamed when complete) and copied
  from there: the build is deterministic, so every test gets the files it would have built.
  """
  from pbrl_jax import pivot_step  # pylint: disable=g-import-not-at-top
  shared = os.environ.get("PBRL_TEST_SHARED_DIR")
  if not shared:
    pivot_step.build(tiny_config(), workdir, oracle=True)
    return
  built = os.path.join(shared, "tiny_pivot")
  with open(os.path.join(shared, "tiny_pivot.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.isdir(built):
      tmp = tempfile.mkdtemp(prefix="tiny_pivot.tmp", dir=shared)
      pivot_step.build(tiny_config(), tmp, oracle=True)
      os.rename(tmp, built)
  shutil.copytree(built, workdir, dirs_exist_ok=True)


def copy_pivot(src_workdir: str, dst_workdir: str) -> None:
  """Reuses a built pivot (and the gsm-symbolic cache) in a fresh run directory."""
  os.makedirs(dst_workdir, exist_ok=True)
  for name in ("pivot", "cache"):
    src = os.path.join(src_workdir, name)
    if os.path.exists(src):
      shutil.copytree(src, os.path.join(dst_workdir, name), dirs_exist_ok=True)


def cli_env() -> dict:
  env = dict(os.environ)
  env["HF_HUB_OFFLINE"] = "1"
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("XLA_FLAGS", None)  # one CPU device: the CLI runs as a user would
  env["PYTHONUNBUFFERED"] = "1"
  return env


def train_cmd(workdir: str, *flags: str) -> list:
  return [sys.executable, "-m", "pbrl_jax.cli.train_main", f"--config={TINY}",
          f"--workdir={workdir}", *flags]


def run_train(workdir: str, *flags: str, timeout: float = 900) -> subprocess.CompletedProcess:
  return subprocess.run(train_cmd(workdir, *flags), env=cli_env(), capture_output=True,
                        text=True, timeout=timeout, cwd=REPO)


def strip_times(rows):
  """Metrics without wall-clock and host-memory entries (those legitimately differ)."""
  return [{k: v for k, v in r.items() if not k.startswith(("time/", "host/"))} for r in rows]
