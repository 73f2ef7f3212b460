"""A 2-process collective program whose process 1 dies mid-run (fault-injection suite).

Run by `test_process_faults.py` as N local processes (`python -m fault_collective_worker`
with tests/faults on PYTHONPATH). Every process joins the cluster through
`pbrl_jax.distributed.maybe_initialize` (as the trainer does), runs one all-reduce that must
succeed, then process 1 SIGKILLs itself while process 0 enters the next all-reduce. Process
0 prints `FAULT_STEP n` before each collective so the test can tell where it stopped.
"""

import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pbrl_jax import distributed


def main() -> None:
  distributed.maybe_initialize()
  mesh = Mesh(np.array(jax.devices()), ("data",),
              axis_types=(jax.sharding.AxisType.Auto,))
  sharding = NamedSharding(mesh, P("data"))
  total = jax.jit(lambda x: jnp.sum(x), out_shardings=NamedSharding(mesh, P()))
  me = jax.process_index()
  for step in range(1, 1000):
    print(f"FAULT_STEP {step}", flush=True)
    if step == 2 and me == 1:
      os.kill(os.getpid(), signal.SIGKILL)
    x = distributed.global_batch_from_local(np.full((2,), me + 1, np.float32), mesh, sharding)
    value = float(total(x))
    print(f"FAULT_SUM {step} {value}", flush=True)
    time.sleep(0.5)
  sys.exit(3)  # never reached: the survivor must fail in a collective first


if __name__ == "__main__":
  main()
