"""The demo path runs with no network: pivot oracle build, a 2-step tiny train, the report.

Two layers: every Python process (Grain workers included) gets a socket guard that refuses
and records non-loopback connections and name lookups, and, where the kernel allows it, the
whole run is in a new network namespace (`unshare -n`: no interface but a downed loopback),
which also stops native code that does not go through Python's socket module.
"""

import os
import shutil
import subprocess

import pytest

import faults_testlib as fl

pytestmark = pytest.mark.slow
GUARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netguard")


def _unshare_prefix() -> list:
  exe = shutil.which("unshare")
  if exe and subprocess.run([exe, "-n", "true"], capture_output=True).returncode == 0:
    return [exe, "-n"]
  return []


def _run(cmd, env, timeout):
  return subprocess.run(_unshare_prefix() + cmd, env=env, capture_output=True, text=True,
                        timeout=timeout, cwd=fl.REPO)


def test_guard_blocks_and_records(tmp_path):
  """The guard is live: a lookup and a connection are refused and recorded."""
  log = tmp_path / "net.log"
  env = fl.tl.cli_env()
  env.update(PYTHONPATH=GUARD, PBRL_NET_GUARD_LOG=str(log))
  code = ("import socket\n"
          "for f in (lambda: socket.getaddrinfo('huggingface.co', 443),\n"
          "          lambda: socket.create_connection(('10.1.2.3', 443), timeout=1)):\n"
          "  try:\n    f()\n  except OSError as e:\n    print('refused', e)\n")
  proc = subprocess.run([fl.python(), "-c", code], env=env, capture_output=True, text=True,
                        timeout=60)
  assert proc.stdout.count("refused") == 2, proc.stdout + proc.stderr
  assert "huggingface.co" in log.read_text() and "10.1.2.3" in log.read_text()


def test_demo_path_runs_offline(tmp_path, tmp_path_factory):
  base = fl.shared_base(tmp_path_factory)
  workdir = str(tmp_path / "demo")
  log = tmp_path / "net.log"
  env = fl.fault_env(base["cache"], PYTHONPATH=os.pathsep.join([GUARD, fl.REPO]),
                     PBRL_NET_GUARD_LOG=str(log), HF_HUB_OFFLINE="1",
                     TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
  for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
    env.pop(var, None)
  pivot = _run([fl.python(), "-m", "pbrl_jax.cli.pivot_main", f"--config={fl.tl.TINY}",
                f"--workdir={workdir}", "--oracle"], env, 600)
  assert pivot.returncode == 0, pivot.stderr[-4000:]
  train = _run(fl.tl.train_cmd(workdir, "--config.total_steps=2", "--config.sample_every=0"),
               env, 900)
  assert train.returncode == 0, train.stderr[-4000:]
  rows = fl.read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2]
  assert os.path.exists(os.path.join(workdir, "report.md"))
  assert not log.exists() or not log.read_text(), f"network attempts: {log.read_text()}"
  print("network namespace:", "unshare -n" if _unshare_prefix() else "socket guard only")
