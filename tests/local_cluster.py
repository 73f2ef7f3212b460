"""Local JAX clusters for the multi-process tests: N CPU processes of one Python module.

`launch_local_processes` wires N processes into one JAX cluster through the environment that
`pbrl_jax.distributed.maybe_initialize` reads (PBRL_COORDINATOR, PBRL_NUM_PROCESSES,
PBRL_PROCESS_ID), gives each its own fake CPU devices (gloo collectives), and kills the whole
group at a deadline or when one process fails, so a dead peer never hangs the suite. A test
harness, so it lives with the tests, not in the package.
"""

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Mapping, Sequence

from pbrl_jax import distributed


@dataclasses.dataclass(frozen=True)
class ProcessResult:
  process_id: int
  returncode: int | None  # None: killed at the deadline.
  stdout: str
  stderr: str


class LocalClusterError(RuntimeError):
  """A local multi-process run failed or timed out; carries every process's output."""

  def __init__(self, message: str, results: list[ProcessResult]):
    tails = "\n".join(
        f"--- process {r.process_id} rc={r.returncode}\n{r.stderr[-3000:]}" for r in results)
    super().__init__(f"{message}\n{tails}")
    self.results = results


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch_local_processes(module: str, args: Sequence[str] = (), *, num_processes: int = 2,
                           devices_per_process: int = 1, timeout_s: float = 120.0,
                           extra_env: Mapping[str, str] | None = None,
                           cwd: str | None = None, check: bool = True
                           ) -> list[ProcessResult]:
  """Runs `python -m module *args` as N processes of one JAX cluster on CPU.

  Each process gets PBRL_COORDINATOR / PBRL_NUM_PROCESSES / PBRL_PROCESS_ID (so a module that
  calls `distributed.maybe_initialize()` joins the cluster), JAX_PLATFORMS=cpu and
  `devices_per_process` fake CPU devices. When one process fails, or the deadline passes,
  every process still running is killed (its whole process group), so nothing hangs.

  Args:
    module: importable module to run with `python -m`.
    args: command-line arguments, the same for every process.
    num_processes: N.
    devices_per_process: CPU devices of each process.
    timeout_s: deadline for the whole group.
    extra_env: variables added to every process's environment.
    cwd: working directory (default: the current one).
    check: raise LocalClusterError unless every process exits with 0.

  Returns:
    One ProcessResult per process, in process order.
  """
  port = free_port()
  procs = []
  outs = []
  for pid in range(num_processes):
    env = dict(os.environ)
    env.update(extra_env or {})
    env.update({
        distributed.ENV_COORDINATOR: f"127.0.0.1:{port}",
        distributed.ENV_NUM_PROCESSES: str(num_processes),
        distributed.ENV_PROCESS_ID: str(pid),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
    })
    for var in (distributed.ENV_MULTIHOST, "JAX_COORDINATOR_ADDRESS"):
      env.pop(var, None)
    # Output goes to files, not pipes: a chatty process cannot block on a full pipe.
    out = (tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+"))
    outs.append(out)
    procs.append(subprocess.Popen([sys.executable, "-m", module, *args], env=env, cwd=cwd,
                                  stdout=out[0], stderr=out[1], start_new_session=True))
  deadline = time.monotonic() + timeout_s
  failed = timed_out = False
  while True:
    codes = [p.poll() for p in procs]
    if all(c is not None for c in codes):
      break
    if any(c not in (None, 0) for c in codes):
      failed = True
      break
    if time.monotonic() > deadline:
      timed_out = True
      break
    time.sleep(0.05)
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGKILL)  # The group we created with start_new_session.
      except ProcessLookupError:
        pass
  results = []
  for pid, (p, (o, e)) in enumerate(zip(procs, outs)):
    p.wait()
    o.seek(0)
    e.seek(0)
    # A negative code is our SIGKILL at the deadline or after another process failed.
    code = p.returncode if p.returncode >= 0 else None
    results.append(ProcessResult(pid, code, o.read(), e.read()))
    o.close()
    e.close()
  if check and (timed_out or failed or any(r.returncode != 0 for r in results)):
    what = f"timed out after {timeout_s:.0f}s" if timed_out else "a process failed"
    raise LocalClusterError(f"local cluster of {num_processes} x `{module}`: {what}", results)
  return results
