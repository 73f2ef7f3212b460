"""Multi-host plumbing: cluster resolution, host shards, and a real 2-process CPU cluster."""

import json

import numpy as np
import pytest

import local_cluster
from pbrl_jax import distributed


def _check_lines(results):
  out = []
  for r in results:
    lines = [l for l in r.stdout.splitlines() if l.startswith("PBRL_CHECK ")]
    assert len(lines) == 1, (r.stdout, r.stderr[-2000:])
    out.append(json.loads(lines[0][len("PBRL_CHECK "):]))
  return out


def test_single_host_needs_nothing():
  assert distributed.resolve_cluster(env={}) is None
  assert distributed.maybe_initialize(env={}) is False
  # One process is single-host even when the variables are set.
  env = {"PBRL_COORDINATOR": "h:1", "PBRL_NUM_PROCESSES": "1", "PBRL_PROCESS_ID": "0"}
  assert distributed.resolve_cluster(env=env) is None
  # A one-worker TPU VM lists one host name.
  assert distributed.resolve_cluster(env={"TPU_WORKER_HOSTNAMES": "w0"}) is None


def test_cluster_sources():
  spec = distributed.resolve_cluster("10.0.0.1:1234", 4, 3, env={})
  assert (spec.coordinator_address, spec.num_processes, spec.process_id) == (
      "10.0.0.1:1234", 4, 3)
  env = {"PBRL_COORDINATOR": "h:5", "PBRL_NUM_PROCESSES": "2", "PBRL_PROCESS_ID": "1"}
  spec = distributed.resolve_cluster(env=env)
  assert (spec.coordinator_address, spec.num_processes, spec.process_id) == ("h:5", 2, 1)
  # Explicit arguments win over the environment.
  assert distributed.resolve_cluster("a:1", 3, 0, env=env).num_processes == 3
  for env in ({"PBRL_MULTIHOST": "1"}, {"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"},
              {"JAX_COORDINATOR_ADDRESS": "h:9"}):
    spec = distributed.resolve_cluster(env=env)
    assert spec is not None and spec.num_processes is None, env  # JAX auto-detects.


@pytest.mark.parametrize("kwargs,env,message", [
    (dict(coordinator_address="h:1"), {}, "missing num_processes, process_id"),
    ({}, {"PBRL_NUM_PROCESSES": "2"}, "missing PBRL_COORDINATOR, PBRL_PROCESS_ID"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), {}, "process_id"),
    ({}, {"PBRL_COORDINATOR": "h:1", "PBRL_NUM_PROCESSES": "two", "PBRL_PROCESS_ID": "0"},
     "PBRL_NUM_PROCESSES: expected an integer"),
])
def test_bad_settings_name_the_field(kwargs, env, message):
  with pytest.raises(distributed.DistributedError, match=message):
    distributed.resolve_cluster(env=env, **kwargs)


def test_host_shard_rows():
  shards = [distributed.HostShard(i, 4) for i in range(4)]
  rows = [list(range(16))[s.rows(16)] for s in shards]
  assert rows == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
  with pytest.raises(distributed.DistributedError, match="not divisible by the process count"):
    shards[0].local_batch_size(10)


def test_two_processes_match_one_process():
  two = _check_lines(local_cluster.launch_local_processes(
      "pbrl_jax.distributed", num_processes=2, devices_per_process=2, timeout_s=150))
  one = _check_lines(local_cluster.launch_local_processes(
      "pbrl_jax.distributed", num_processes=1, devices_per_process=4, timeout_s=150))
  assert [r["process_index"] for r in two] == [0, 1]
  assert {r["process_count"] for r in two} == {2} and one[0]["process_count"] == 1
  assert {r["global_devices"] for r in two + one} == {4}
  assert {r["local_devices"] for r in two} == {2}
  for r in two + one:
    assert r["global_shape"] == [8, 3]
    assert r["sum"] == r["numpy_sum"] == r["psum"]
    assert r["mean"] == pytest.approx(r["numpy_mean"])
    # Each host's own rows: read from its shards, computed there, placed and gathered whole.
    assert r["rows_of"] == r["numpy_rows"]
    assert r["placed"] == [10.0 * i for i in range(8)]
    assert r["gathered"] == [10 * i for i in range(8)]
  assert [r["local_rows"] for r in two] == [[0, 1, 2, 3], [4, 5, 6, 7]]
  assert one[0]["local_rows"] == list(range(8))
  keys = ("sum", "mean", "sq", "psum")
  assert [r[k] for k in keys for r in two] == [one[0][k] for k in keys for _ in two]


def test_harness_kills_at_deadline():
  # Starting JAX takes longer than 0.3 s, so the deadline passes and both are killed.
  with pytest.raises(local_cluster.LocalClusterError, match="timed out") as info:
    local_cluster.launch_local_processes(
        "pbrl_jax.distributed", num_processes=2, timeout_s=0.3)
  assert [r.returncode for r in info.value.results] == [None, None]


@pytest.mark.parametrize("value", ["soon", "0"])
def test_bad_heartbeat_timeout_is_named_before_joining(value):
  env = {"PBRL_COORDINATOR": "127.0.0.1:1", "PBRL_NUM_PROCESSES": "2", "PBRL_PROCESS_ID": "0",
         distributed.ENV_HEARTBEAT_TIMEOUT: value}
  with pytest.raises(distributed.DistributedError, match=distributed.ENV_HEARTBEAT_TIMEOUT):
    distributed.maybe_initialize(env=env)


def test_gather_rows_gives_json_values_and_names_missing_rows():
  got = distributed.gather_rows([{"r": np.float32(0.5), "n": ("a",)}, {"r": float("nan")}],
                                np.array([1, 0]), 2)
  assert got[1] == {"r": 0.5, "n": ["a"]} and type(got[1]["r"]) is float
  assert np.isnan(got[0]["r"])  # NaN (a broken reward term) stays NaN
  with pytest.raises(distributed.DistributedError, match=r"rows \[1\] were computed by no host"):
    distributed.gather_rows([1.0, 2.0], np.array([0, 2]), 3)
  with pytest.raises(TypeError, match="object is not a JSON value"):
    distributed.gather_rows([object()], np.array([0]), 1)
