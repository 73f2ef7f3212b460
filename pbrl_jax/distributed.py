"""Multi-host plumbing: one launch path for every host (STYLE principle 10).

Every worker of a pod slice runs the same command. `maybe_initialize` is called first, before
any JAX computation, and calls `jax.distributed.initialize()` only in multi-host mode:

  1. explicit arguments (`coordinator_address`, `num_processes`, `process_id`);
  2. otherwise the environment variables PBRL_COORDINATOR, PBRL_NUM_PROCESSES and
     PBRL_PROCESS_ID (what the tests' local cluster sets, and what a launcher on plain VMs or
     GPUs sets);
  3. otherwise JAX's own JAX_COORDINATOR_ADDRESS, or a Cloud TPU multi-host environment:
     PBRL_MULTIHOST=1 (exported by launch/tpu_pod.sh on slices with several workers) or a
     TPU_WORKER_HOSTNAMES list with more than one host (GKE). JAX then detects the
     coordinator, process count and process id itself.

Anything else is single-host and nothing is called: a v5e-1 Colab or a laptop never waits
for a coordinator.

Two ways to feed a global batch. Per-host data: `host_shard` says which slice of the global
batch this process reads, and `global_batch_from_local` assembles the per-host pieces into one
global `jax.Array` with `jax.make_array_from_process_local_data`. Replicated host data (what
the trainer does with its small text batches, so that every host sees the same bucket shapes
and a run does not depend on the host count): every host holds the same numpy value and
`global_from_host` places each device's slice of it. `host_value` is the way back: the full
value of global arrays on every host. `any_host` agrees on a flag (a SIGTERM that reached one
worker only) so every host leaves the loop at the same step.

Host work split by rows (the reward's text scores): `local_rows` says which rows of a batch
this host's devices hold; each host computes those, `global_from_rows` places its results on
its own devices and `gather_rows` gives every host every row's (JSON) result.

`python -m pbrl_jax.distributed` is a collective self-check that runs on a real pod as on N
local processes (the tests' harness, `tests/local_cluster.py`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

ENV_COORDINATOR = "PBRL_COORDINATOR"
ENV_NUM_PROCESSES = "PBRL_NUM_PROCESSES"
ENV_PROCESS_ID = "PBRL_PROCESS_ID"
ENV_MULTIHOST = "PBRL_MULTIHOST"
# Seconds without heartbeats after which the coordination service declares a process dead
# and the others fail instead of waiting. JAX's default is 100 s; a preemptible slice may want
# less, so a restart begins sooner.
ENV_HEARTBEAT_TIMEOUT = "PBRL_HEARTBEAT_TIMEOUT_S"


class DistributedError(RuntimeError):
  """Multi-host setup that cannot work; the message names the argument or variable."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
  """How to call `jax.distributed.initialize`.

  Attributes:
    coordinator_address: 'host:port' of process 0, or None to let JAX detect it.
    num_processes: number of processes, or None to let JAX detect it.
    process_id: this process, or None to let JAX detect it.
    source: where the setting came from, for logs and errors.
  """

  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  source: str


def _parse_int(value: Any, name: str) -> int:
  try:
    return int(value)
  except (TypeError, ValueError) as e:
    raise DistributedError(f"{name}: expected an integer, got {value!r}") from e


def _explicit_spec(coordinator_address: str | None, num_processes: Any, process_id: Any,
                   source: str, names: tuple[str, str, str]) -> ClusterSpec | None:
  """A spec from three values that must be given together; None when single-process."""
  given = [v is not None and v != "" for v in (coordinator_address, num_processes, process_id)]
  if not any(given):
    return None
  if not all(given):
    missing = [n for n, g in zip(names, given) if not g]
    raise DistributedError(
        f"{source}: {', '.join(names)} must be set together; missing {', '.join(missing)}")
  n = _parse_int(num_processes, names[1])
  pid = _parse_int(process_id, names[2])
  if n < 1:
    raise DistributedError(f"{names[1]}: must be >= 1, got {n}")
  if not 0 <= pid < n:
    raise DistributedError(f"{names[2]}: must be in [0, {n}), got {pid}")
  if n == 1:
    return None
  return ClusterSpec(str(coordinator_address), n, pid, source)


def resolve_cluster(coordinator_address: str | None = None, num_processes: int | None = None,
                    process_id: int | None = None,
                    env: Mapping[str, str] | None = None) -> ClusterSpec | None:
  """Decides whether this process is part of a multi-host job, without touching JAX.

  Args:
    coordinator_address: 'host:port' of process 0.
    num_processes: total number of processes.
    process_id: index of this process.
    env: environment to read (os.environ by default).

  Returns:
    The spec to initialise with, or None in single-host mode.

  Raises:
    DistributedError: a partial or inconsistent setting, naming the argument or variable.
  """
  env = os.environ if env is None else env
  spec = _explicit_spec(coordinator_address, num_processes, process_id, "arguments",
                        ("coordinator_address", "num_processes", "process_id"))
  if spec is not None or any(v is not None for v in (coordinator_address, num_processes,
                                                        process_id)):
    return spec
  spec = _explicit_spec(env.get(ENV_COORDINATOR), env.get(ENV_NUM_PROCESSES),
                        env.get(ENV_PROCESS_ID), "environment",
                        (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID))
  if spec is not None or env.get(ENV_NUM_PROCESSES):
    return spec
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return ClusterSpec(None, None, None, "JAX_COORDINATOR_ADDRESS")
  if env.get(ENV_MULTIHOST, "").lower() in ("1", "true", "yes"):
    return ClusterSpec(None, None, None, f"{ENV_MULTIHOST} (Cloud TPU auto-detection)")
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if len(hosts) > 1:
    return ClusterSpec(None, None, None, "TPU_WORKER_HOSTNAMES (Cloud TPU auto-detection)")
  return None


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, *, timeout_s: int = 300,
                     heartbeat_timeout_s: int | None = None,
                     env: Mapping[str, str] | None = None) -> bool:
  """Calls `jax.distributed.initialize()` in multi-host mode only; call it first.

  Args:
    coordinator_address: 'host:port' of process 0 (see the module docstring for the
      environment variables and auto-detection used when this is None).
    num_processes: total number of processes.
    process_id: index of this process.
    timeout_s: how long to wait for every process to reach the coordinator.
    heartbeat_timeout_s: how long a silent process may go before the others fail; None reads
      PBRL_HEARTBEAT_TIMEOUT_S, or keeps JAX's default (100 s) when that is unset.
    env: environment to read (os.environ by default).

  Returns:
    True when this process is part of a multi-host job (now initialised), False otherwise.

  Raises:
    DistributedError: inconsistent settings, JAX already computing, or the coordinator not
      reached within `timeout_s`.
  """
  spec = resolve_cluster(coordinator_address, num_processes, process_id, env)
  if spec is None:
    return False
  if jax.distributed.is_initialized():
    return True
  env = os.environ if env is None else env
  if heartbeat_timeout_s is None and env.get(ENV_HEARTBEAT_TIMEOUT):
    heartbeat_timeout_s = _parse_int(env[ENV_HEARTBEAT_TIMEOUT], ENV_HEARTBEAT_TIMEOUT)
  heartbeat = {}
  if heartbeat_timeout_s is not None:
    if heartbeat_timeout_s < 1:
      raise DistributedError(f"heartbeat timeout ({ENV_HEARTBEAT_TIMEOUT}): must be >= 1 s,"
                             f" got {heartbeat_timeout_s}")
    heartbeat = {"heartbeat_timeout_seconds": int(heartbeat_timeout_s)}
  try:
    jax.distributed.initialize(
        coordinator_address=spec.coordinator_address, num_processes=spec.num_processes,
        process_id=spec.process_id, initialization_timeout=int(timeout_s), **heartbeat)
  except Exception as e:  # JAX raises RuntimeError/ValueError/XlaRuntimeError here.
    raise DistributedError(
        f"jax.distributed.initialize failed (settings from {spec.source}: coordinator"
        f" {spec.coordinator_address or 'auto'}, num_processes {spec.num_processes or 'auto'},"
        f" process_id {spec.process_id if spec.process_id is not None else 'auto'},"
        f" timeout {timeout_s}s). It must run before any JAX computation, and every process"
        f" must start within the timeout and reach the coordinator: {e}") from e
  return True


@dataclasses.dataclass(frozen=True)
class HostShard:
  """The part of the global data stream this process reads.

  Attributes:
    index: this process (jax.process_index()).
    count: number of processes (jax.process_count()).
  """

  index: int
  count: int

  def local_batch_size(self, global_batch_size: int) -> int:
    """Rows of each global batch this host loads; errors if the hosts cannot split it."""
    if global_batch_size % self.count:
      raise DistributedError(
          f"global batch size {global_batch_size} is not divisible by the process count"
          f" {self.count}")
    return global_batch_size // self.count

  def rows(self, global_batch_size: int) -> slice:
    """This host's contiguous slice of a global batch (the order the mesh expects)."""
    n = self.local_batch_size(global_batch_size)
    return slice(self.index * n, (self.index + 1) * n)


def host_shard() -> HostShard:
  """This process's shard of the data (one shard on a single host)."""
  return HostShard(jax.process_index(), jax.process_count())


def global_batch_from_local(local_arrays: Any, mesh: Mesh,
                            sharding: Any = None) -> Any:
  """Builds global `jax.Array`s from per-host numpy batches.

  Each host passes the rows it loaded (its `host_shard().rows(...)`); with the default
  sharding the leading axis is split over the ('data', 'fsdp') mesh axes, so the global batch
  is the concatenation of the hosts' rows in process order.

  Args:
    local_arrays: pytree of host-local arrays, leading axis = local batch.
    mesh: the global mesh.
    sharding: a sharding or pytree of shardings; default batch-sharded over
      ('data', 'fsdp').

  Returns:
    Pytree of global arrays with leading axis = local batch * process count.
  """
  if sharding is None:
    sharding = jax.tree.map(
        lambda x: NamedSharding(mesh, P(("data", "fsdp"), *([None] * (np.ndim(x) - 1)))),
        local_arrays)
  elif isinstance(sharding, jax.sharding.Sharding):
    sharding = jax.tree.map(lambda _: sharding, local_arrays)
  return jax.make_array_from_process_local_data(sharding, local_arrays)


def global_from_host(tree: Any, shardings: Any) -> Any:
  """Global `jax.Array`s from host values that are the same on every host.

  Each device receives its own slice (`make_array_from_callback`), so nothing crosses hosts
  and nothing checks equality: the caller guarantees it (the trainer's batches come from the
  same seeded pipeline and the same all-gathered samples on every host).

  Args:
    tree: pytree of numpy-convertible arrays with their global shapes.
    shardings: one sharding for every leaf, or a matching pytree of shardings.
  """
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)

  def place(x, sharding):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sharding)  # already global: at most a reshard
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(place, tree, shardings)


def host_value(tree: Any) -> Any:
  """The full numpy value of (possibly non-fully-addressable) arrays, on every host."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(tree, tiled=True)


def local_rows(sharding: jax.sharding.Sharding, n: int) -> np.ndarray:
  """The rows of an [n, ...] array laid out by `sharding` that this process's devices hold.

  Sorted row indices: all n rows on one host; on a pod each host's own slice of the batch
  (rows replicated over several hosts are held, and later computed, by each of them).
  """
  held = np.zeros((n,), bool)
  for index in sharding.addressable_devices_indices_map((n,)).values():
    held[index[0]] = True
  return np.flatnonzero(held)


def _row_positions(rows: np.ndarray, n: int) -> np.ndarray:
  """For each of n global rows, its position in `rows` (-1: not among them)."""
  pos = np.full((n,), -1, np.int64)
  pos[rows] = np.arange(len(rows))
  return pos


def global_from_rows(tree: Any, rows: np.ndarray, n: int, shardings: Any) -> Any:
  """Global `jax.Array`s of n rows from this host's `rows` of them (the leading axis).

  Each host passes only the rows it holds (`local_rows`), computed from its own data; each
  addressable device takes its slice from them, so nothing crosses hosts.
  """
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)
  pos = _row_positions(rows, n)

  def place(x, sharding):
    x = np.asarray(x)
    if x.shape[0] != len(rows):
      raise ValueError(f"global_from_rows: {x.shape[0]} rows of data for {len(rows)} row"
                       " indices")

    def piece(index):
      want = pos[np.arange(n)[index[0]]]
      if np.any(want < 0):
        raise DistributedError(f"process {jax.process_index()}: a device of this host needs"
                               " rows this host did not compute")
      return x[want][(slice(None),) + tuple(index[1:])]

    return jax.make_array_from_callback((n,) + x.shape[1:], sharding, piece)

  return jax.tree.map(place, tree, shardings)


def rows_of(array: jax.Array, rows: np.ndarray) -> np.ndarray:
  """`array`'s `rows` (leading axis) read from this host's own shards, with no collective."""
  if array.is_fully_addressable:
    return np.asarray(array)[rows]
  n = array.shape[0]
  pos = _row_positions(rows, n)
  out = np.zeros((len(rows),) + array.shape[1:], array.dtype)
  filled = np.zeros((len(rows),), bool)
  for shard in array.addressable_shards:
    at = pos[np.arange(n)[shard.index[0]]]
    keep = at >= 0
    out[(at[keep],) + tuple(shard.index[1:])] = np.asarray(shard.data)[keep]
    filled[at[keep]] = True
  if not filled.all():
    raise DistributedError(f"process {jax.process_index()}: rows"
                           f" {rows[~filled].tolist()[:8]} are on no device of this host")
  return out


def _json_scalar(value: Any) -> Any:
  if isinstance(value, np.generic):  # numpy scalars travel as the Python value they hold
    return value.item()
  raise TypeError(f"gather_rows: {type(value).__name__} is not a JSON value")


def gather_rows(values: Sequence[Any], rows: np.ndarray, n: int) -> list[Any]:
  """All n rows' values on every host, from each host's `values` of its `rows`.

  For host-side results of each host's own rows (reward records: numbers, strings, lists).
  They cross hosts as JSON, and pass through JSON on one host too, so a run's records are
  the same values of the same types whatever the host count (numpy scalars become Python
  numbers, tuples lists). A row held by several hosts is taken from the first.
  """
  if len(values) != len(rows):
    raise ValueError(f"gather_rows: {len(values)} values for {len(rows)} rows")
  payload = json.dumps([np.asarray(rows).tolist(), list(values)], default=_json_scalar)
  if jax.process_count() == 1:
    pieces = [json.loads(payload)]
  else:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    data = np.frombuffer(payload.encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(
        np.asarray([data.size], np.int32))).reshape(-1)
    padded = np.zeros((int(sizes.max()),), np.uint8)
    padded[:data.size] = data
    every = np.asarray(multihost_utils.process_allgather(padded))  # [processes, longest]
    pieces = [json.loads(bytes(every[p, :size])) for p, size in enumerate(sizes)]
  out: list[Any] = [None] * n
  seen = np.zeros((n,), bool)
  for host_rows, host_values in pieces:
    for row, value in zip(host_rows, host_values):
      if not seen[row]:
        out[row], seen[row] = value, True
  if not seen.all():
    raise DistributedError(f"gather_rows: rows {np.flatnonzero(~seen).tolist()[:8]} were"
                           " computed by no host")
  return out


def any_host(flag: bool) -> bool:
  """True on every host when `flag` is true on at least one (a collective on multi-host)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags_ = multihost_utils.process_allgather(np.asarray(flag, np.int32))
  return bool(np.any(flags_))


# ---------------------------------------------------------------------------------------------
# Collective self-check: `python -m pbrl_jax.distributed` on every host.
# ---------------------------------------------------------------------------------------------


def collective_check(rows_per_device: int = 2, width: int = 3) -> dict[str, Any]:
  """Builds a global batch from per-host rows and reduces it across every device.

  The global batch is arange(...) reshaped to [devices * rows_per_device, width]; each host
  contributes only its own rows. Returns sums/means computed by a jitted global reduction and
  by a shard_map psum, which must agree with each other and with numpy on any host count.
  """
  devices = jax.devices()
  mesh = Mesh(np.array(devices).reshape(-1, 1, 1), ("data", "fsdp", "tensor"),
              axis_types=(jax.sharding.AxisType.Auto,) * 3)
  global_rows = len(devices) * rows_per_device
  full = np.arange(global_rows * width, dtype=np.float32).reshape(global_rows, width)
  shard = host_shard()
  local = full[shard.rows(global_rows)]
  x = global_batch_from_local(local, mesh)
  replicated = NamedSharding(mesh, P())

  @jax.jit
  def reduce(v):
    return {"sum": v.sum(axis=0), "mean": v.mean(), "sq": (v * v).sum()}

  out = jax.jit(reduce, out_shardings=replicated)(x)

  def local_sum(v):
    return jax.lax.psum(v.sum(axis=0), ("data", "fsdp"))

  psum = jax.jit(jax.shard_map(local_sum, mesh=mesh, in_specs=P(("data", "fsdp")),
                               out_specs=P()), out_shardings=replicated)(x)
  # Host work split by rows (what the trainer's reward stage does): each host computes
  # 10 * row for the rows its devices hold, and only for those.
  by_row = NamedSharding(mesh, P(("data", "fsdp")))  # the trainer's batch sharding
  rows = local_rows(by_row, global_rows)
  placed = global_from_rows((10.0 * rows).astype(np.float32), rows, global_rows, by_row)
  return {
      "process_index": shard.index,
      "process_count": shard.count,
      "global_devices": len(devices),
      "local_devices": jax.local_device_count(),
      "global_shape": list(x.shape),
      "sum": np.asarray(out["sum"]).tolist(),
      "mean": float(out["mean"]),
      "sq": float(out["sq"]),
      "psum": np.asarray(psum).tolist(),
      "numpy_sum": full.sum(axis=0).tolist(),
      "numpy_mean": float(full.mean()),
      "local_rows": rows.tolist(),
      "rows_of": rows_of(x, rows).tolist(),
      "numpy_rows": full[rows].tolist(),
      "placed": np.asarray(host_value(placed)).tolist(),
      "gathered": gather_rows([10 * int(r) for r in rows], rows, global_rows),
  }


def main(argv: Sequence[str]) -> None:
  del argv
  maybe_initialize()
  print("PBRL_CHECK " + json.dumps(collective_check()), flush=True)


if __name__ == "__main__":
  from absl import app
  app.run(main)
