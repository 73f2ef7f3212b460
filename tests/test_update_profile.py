"""`benchmarks/update_step.py --profile`: the per-op table counts self time, never twice.

A Perfetto trace written here by hand: a while loop holding two fusions, the runtime's own
spans around them, and a second thread. Self time of the loop = its duration less its body's;
runtime spans are left out; ops of one kind add up in `by_kind`.
"""

import gzip
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import update_step  # noqa: E402  pylint: disable=wrong-import-position


def _write_trace(root, events):
  path = os.path.join(root, "plugins", "profile", "run1")
  os.makedirs(path)
  with gzip.open(os.path.join(path, "perfetto_trace.json.gz"), "wt") as f:
    json.dump({"traceEvents": events}, f)


def _x(name, ts_ms, dur_ms, tid=1):  # the trace's own unit is the microsecond
  return {"ph": "X", "name": name, "ts": 1e3 * ts_ms, "dur": 1e3 * dur_ms, "pid": 1, "tid": tid}


def test_self_time_excludes_nested_ops_and_runtime_spans(tmp_path):
  _write_trace(str(tmp_path), [
      _x("PjitFunction(update)", 0, 1000),  # the runtime's span around everything
      _x("while.3", 10, 500),
      _x("ynn_fusion.1", 20, 200),
      _x("copy_bitcast_fusion.7", 250, 100),
      _x("ynn_fusion.2", 600, 300),
      _x("ynn_fusion.1", 0, 50, tid=2),  # another thread: counted on its own
      {"ph": "i", "name": "marker", "ts": 5, "pid": 1, "tid": 1},
  ])
  ops = {r["op"]: r for r in update_step.top_ops(str(tmp_path), None)}
  assert set(ops) == {"while.3", "ynn_fusion.1", "copy_bitcast_fusion.7", "ynn_fusion.2"}
  assert ops["while.3"]["ms"] == pytest.approx(200)  # 500 - 200 - 100
  assert ops["ynn_fusion.1"]["ms"] == pytest.approx(250) and ops["ynn_fusion.1"]["calls"] == 2
  assert ops["ynn_fusion.2"]["ms"] == pytest.approx(300)
  assert sum(r["share"] for r in ops.values()) == pytest.approx(1.0, abs=1e-3)
  kinds = {r["op"]: r for r in update_step.by_kind(list(ops.values()))}
  assert kinds["ynn_fusion"]["ms"] == pytest.approx(550) and kinds["ynn_fusion"]["calls"] == 3
  assert kinds["while"]["ms"] == pytest.approx(200)


def test_missing_trace_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="perfetto_trace"):
    update_step.top_ops(str(tmp_path), 5)
