"""pbrl-pivot end to end: import path through the CLI, SIGKILL mid-run, resume == clean run."""

import os
import signal
import subprocess
import sys
import time

import pytest

from pbrl_jax.data import pivot

import data_testlib as lib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
N = 12


def _fixtures(root):
  mgsm = lib.mgsm_dir(os.path.join(root, "mgsm"), n=N)
  refs = lib.write_jsonl(os.path.join(root, "refs.jsonl"), [
      {"id": f"mgsm/{i}", "question": f"Q{i}: {i} + {i + 1} apples?",
       "response": f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1 + (i == 5)}",
       "answer": str(2 * i + 1)} for i in range(N)])
  return mgsm, refs


def _cmd(workdir, mgsm, refs):
  cfg = os.path.join(REPO, "configs", "data_defaults.py")
  return [sys.executable, "-m", "pbrl_jax.cli.pivot_main", f"--config={cfg}",
          f"--workdir={workdir}", f"--references={refs}", "--config.data.source=mgsm",
          f"--config.data.path={mgsm}", "--config.data.langs=('de','fr')",
          "--config.pivot.shard_size=2",
          "--config.pivot.encoders=('host:data_testlib:FakeEncoder',)"]


def _env(delay):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([REPO, HERE, env.get("PYTHONPATH", "")])
  env["JAX_PLATFORMS"] = "cpu"
  env[pivot.TEST_DELAY_ENV] = str(delay)
  return env


def _shards(workdir):
  d = pivot.reference_dir(workdir)
  out = {}
  for name in sorted(os.listdir(d)):
    if name.endswith(".arrayrecord"):
      out[name] = pivot._read_shard(os.path.join(d, name))  # pylint: disable=protected-access
  return out


@pytest.mark.slow
def test_sigkill_then_resume_equals_clean_run(tmp_path):
  mgsm, refs = _fixtures(str(tmp_path))
  clean = str(tmp_path / "clean")
  subprocess.run(_cmd(clean, mgsm, refs), env=_env(0), check=True, capture_output=True,
                 timeout=240)
  manifest = pivot.load_manifest(pivot.reference_dir(clean))
  assert manifest["counts"] == {"questions": N, "references": N - 1}  # mgsm/5 is wrong
  assert manifest["filter"]["dropped_wrong_answer"] == 1
  assert manifest["encoders"] == {"host:data_testlib:FakeEncoder": 8}
  assert manifest["pivot_model"] == "imported" and len(manifest["shards"]) == N // 2

  killed = str(tmp_path / "killed")
  ref_dir = pivot.reference_dir(killed)
  proc = subprocess.Popen(_cmd(killed, mgsm, refs), env=_env(1.5), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 180
    # Kill while a later shard sits under its temporary name, after two finished.
    while time.monotonic() < deadline:
      names = os.listdir(ref_dir) if os.path.isdir(ref_dir) else []
      done = [n for n in names if n.endswith(".done")]
      if len(done) >= 2 and any(".tmp-" in n for n in names):
        break
      time.sleep(0.05)
    else:
      pytest.fail("the pivot run did not reach its third shard")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  names = os.listdir(ref_dir)
  assert pivot.MANIFEST not in names
  assert any(".tmp-" in n for n in names)
  finished = {n.removesuffix(".done") for n in names if n.endswith(".done")}
  mtimes = {n: os.stat(os.path.join(ref_dir, n)).st_mtime_ns for n in finished}
  with pytest.raises(Exception):
    pivot.load_references(ref_dir)

  subprocess.run(_cmd(killed, mgsm, refs), env=_env(0), check=True, capture_output=True,
                 timeout=240)
  assert not any(".tmp-" in n for n in os.listdir(ref_dir))
  assert _shards(killed) == _shards(clean)
  again = pivot.load_manifest(ref_dir)
  assert again["shards"] == manifest["shards"] and again["counts"] == manifest["counts"]
  # The shards finished before the kill were kept, not rebuilt.
  assert {n: os.stat(os.path.join(ref_dir, n)).st_mtime_ns for n in finished} == mtimes
  assert pivot.load_references(ref_dir).keys() == pivot.load_references(
      pivot.reference_dir(clean)).keys()
