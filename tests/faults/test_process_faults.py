"""Dead processes: a Grain worker of the trainer, and one process of a 2-process JAX cluster.

Either way the survivor must fail with a clear error within a bounded time, not hang.
"""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

import faults_testlib as fl
import local_cluster
from pbrl_jax import distributed

pytestmark = pytest.mark.slow
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  return fl.shared_base(tmp_path_factory)


def _grain_workers(pid: int) -> list:
  """Children started by multiprocessing's spawn (Grain workers), not its resource tracker."""
  out = []
  for child in psutil.Process(pid).children(recursive=True):
    try:
      cmd = " ".join(child.cmdline())
    except psutil.NoSuchProcess:
      continue
    if "multiprocessing.spawn" in cmd and "resource_tracker" not in cmd:
      out.append(child)
  return out


def test_grain_worker_killed_fails_fast(base):
  workdir = fl.workdir_with_pivot(base, "grain_worker")
  run = fl.Run(workdir, ("--config.total_steps=50", "--config.checkpoint_every=100",
                         "--config.sample_every=0", "--config.data.worker_count=1"),
               fl.fault_env(base["cache"]), "run")
  run.wait_until(lambda: len(fl.metric_steps(workdir)) >= 1, 600, "step 1")
  workers = _grain_workers(run.proc.pid)
  assert len(workers) == 1, [w.cmdline() for w in workers]
  workers[0].kill()
  killed_at = time.monotonic()
  rc = run.wait(120)
  elapsed = time.monotonic() - killed_at
  out = run.output()
  assert rc != 0, out[-4000:]
  assert "Worker process was terminated unexpectedly" in out, out[-4000:]
  assert len(fl.metric_steps(workdir)) < 50
  print(f"grain worker killed: run failed after {elapsed:.1f}s")


def test_dead_peer_of_two_processes_does_not_hang_survivor():
  """Process 1 SIGKILLs itself between two all-reduces; process 0 must error and exit.

  A collective program, not the trainer: it isolates the failure detection (gloo's socket
  error in the collective, then the coordination service's heartbeat timeout at exit).
  """
  port = local_cluster.free_port()
  procs, logs = [], []
  for pid in range(2):
    env = fl.fault_env("")
    env.pop("JAX_COMPILATION_CACHE_DIR")
    env.update({distributed.ENV_COORDINATOR: f"127.0.0.1:{port}",
                distributed.ENV_NUM_PROCESSES: "2", distributed.ENV_PROCESS_ID: str(pid),
                # Detect the dead peer after 10 s of silence instead of JAX's 100 s.
                distributed.ENV_HEARTBEAT_TIMEOUT: "10",
                "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
                "PYTHONPATH": os.pathsep.join([HERE, fl.REPO])})
    log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"),
                            f"fault_peer_{os.getpid()}_{pid}.log"), "w+")
    logs.append(log)
    procs.append(subprocess.Popen([sys.executable, "-m", "fault_collective_worker"], env=env,
                                  cwd=fl.REPO, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True))
  start = time.monotonic()
  try:
    procs[0].wait(timeout=240)
  except subprocess.TimeoutExpired:
    pass
  elapsed = time.monotonic() - start
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
    p.wait()
  outs = []
  for log in logs:
    log.seek(0)
    outs.append(log.read())
    os.unlink(log.name)
    log.close()
  survivor = outs[0]
  assert "FAULT_SUM 1 6.0" in survivor, survivor[-3000:]  # the first all-reduce worked
  assert procs[1].returncode == -signal.SIGKILL
  assert elapsed < 240 and procs[0].returncode != 0, (elapsed, survivor[-3000:])
  # The error names what happened: the peer is gone (gloo) / stopped sending heartbeats.
  assert "Connection reset by peer" in survivor or "heartbeat" in survivor, survivor[-3000:]
  print(f"survivor exited rc={procs[0].returncode} after {elapsed:.1f}s")
