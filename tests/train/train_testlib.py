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


def built_once(name: str, build) -> str | None:
  """`PBRL_TEST_SHARED_DIR/name`, built by `build(directory)` once per test run.

  A lock serialises the pytest-xdist workers; the first builds into a temp dir renamed when
  complete, so a failed build leaves nothing that looks finished and the next caller retries.
  None when no shared directory is set (tests/conftest.py sets one).
  """
  shared = os.environ.get("PBRL_TEST_SHARED_DIR")
  if not shared:
    return None
  built = os.path.join(shared, name)
  with open(os.path.join(shared, name + ".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.isdir(built):
      tmp = tempfile.mkdtemp(prefix=name + ".tmp", dir=shared)
      build(tmp)
      os.rename(tmp, built)
  return built


def build_tiny_pivot(workdir: str) -> None:
  """Oracle pivot references for configs/tiny.py in `workdir` (in process).

  Built once per test run (`built_once`) and copied from there: the build is deterministic,
  so every test gets the files it would have built.
  """
  from pbrl_jax import pivot_step  # pylint: disable=g-import-not-at-top
  build = lambda d: pivot_step.build(tiny_config(), d, oracle=True)
  built = built_once("tiny_pivot", build)
  if built is None:
    build(workdir)
    return
  shutil.copytree(built, workdir, dirs_exist_ok=True)


# The uninterrupted GRPO run that the end-to-end, resume and preemption tests compare with.
REFERENCE_STEPS = 6
REFERENCE_FLAGS = (f"--config.total_steps={REFERENCE_STEPS}", "--config.checkpoint_every=2")


def reference_run() -> str:
  """Workdir of one `pbrl-train` run of configs/tiny.py with REFERENCE_FLAGS, run once per
  test run and shared: read it, or copy it before resuming or damaging it."""
  def build(workdir):
    build_tiny_pivot(workdir)
    proc = run_train(workdir, *REFERENCE_FLAGS)
    if proc.returncode:
      raise RuntimeError(f"the reference run failed (exit {proc.returncode}):\n"
                         + proc.stderr[-4000:])
  built = built_once("reference_run", build)
  assert built, "tests/conftest.py sets PBRL_TEST_SHARED_DIR"
  return built


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
  if "PBRL_TEST_XLA_CACHE_DIR" in env:  # the run's shared cache (tests/conftest.py)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", env["PBRL_TEST_XLA_CACHE_DIR"])
  env["PYTHONUNBUFFERED"] = "1"
  return env


def train_cmd(workdir: str, *flags: str) -> list:
  return [sys.executable, "-m", "pbrl_jax.cli.train_main", f"--config={TINY}",
          f"--workdir={workdir}", *flags]


def run_train(workdir: str, *flags: str, timeout: float = 900) -> subprocess.CompletedProcess:
  return subprocess.run(train_cmd(workdir, *flags), env=cli_env(), capture_output=True,
                        text=True, timeout=timeout, cwd=REPO)


def strip_times(rows):
  """Metrics without wall-clock and host-side entries (memory, rows this host scored: those
  legitimately differ)."""
  return [{k: v for k, v in r.items() if not k.startswith(("time/", "host/"))} for r in rows]
