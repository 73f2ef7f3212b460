"""A run directory in a bucket: pbrl-pivot, pbrl-train (SIGKILLed, then resumed from the
bucket) and pbrl-eval against a real GCS server (gcp-storage-emulator, started here on
localhost), and a bucket nobody answers for.

Every output goes through `pbrl_jax.fileio` (and Orbax's own gs:// support for checkpoints):
the commands run in an empty working directory with their own empty TMPDIR, and both must
still be empty at the end: nothing is written locally, no folder named 'gs:' appears.
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

import gcs_emulator

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "train"))
# pylint: disable=g-import-not-at-top,wrong-import-position
import train_testlib as tl
from pbrl_jax import metrics as metrics_lib

pytestmark = pytest.mark.slow

BUCKET = "pbrl-test"
RUN = f"gs://{BUCKET}/runs/tiny"
TIMEOUT = 600


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  port = gcs_emulator.free_port()
  log = str(tmp_path_factory.mktemp("gcs") / "emulator.log")
  proc = gcs_emulator.start(port, BUCKET, log)
  yield {"port": port, "env": gcs_emulator.emulator_env(port)}
  proc.kill()
  proc.wait()


def _object(store, name):
  """The bytes of object `name` of the bucket, or None."""
  url = (f"http://127.0.0.1:{store['port']}/download/storage/v1/b/{BUCKET}/o/"
         f"{urllib.parse.quote(name, safe='')}?alt=media")
  try:
    with urllib.request.urlopen(url, timeout=10) as r:
      return r.read()
  except urllib.error.HTTPError as e:
    if e.code == 404:
      return None
    raise


def _names(store, prefix):
  url = (f"http://127.0.0.1:{store['port']}/storage/v1/b/{BUCKET}/o?"
         f"prefix={urllib.parse.quote(prefix)}&maxResults=10000")
  with urllib.request.urlopen(url, timeout=10) as r:
    return sorted(o["name"] for o in json.loads(r.read()).get("items", []))


def _env(store, tmpdir):
  env = tl.cli_env()
  env.update(store["env"])
  env["TMPDIR"] = str(tmpdir)
  return env


def _cli(module, *args):
  return [sys.executable, "-m", module, f"--config={tl.TINY}", f"--workdir={RUN}", *args]


def _logged_steps(store):
  data = _object(store, "runs/tiny/metrics.jsonl")
  return [] if data is None else [r["step"] for r in _rows(data)]


def _rows(data):
  return [json.loads(x) for x in data.decode().split("\n") if x.strip()]


def test_pivot_train_kill_resume_and_eval_in_a_bucket(store, tmp_path):
  cwd, tmpdir = tmp_path / "cwd", tmp_path / "tmp"
  cwd.mkdir()
  tmpdir.mkdir()
  env = _env(store, tmpdir)
  run = lambda cmd: subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                                   timeout=TIMEOUT, check=False)
  reference = tl.strip_times(metrics_lib.read_jsonl(
      os.path.join(tl.reference_run(), "metrics.jsonl")))

  pivot = run(_cli("pbrl_jax.cli.pivot_main", "--oracle"))
  assert pivot.returncode == 0, pivot.stderr[-4000:]
  assert _object(store, "runs/tiny/pivot/manifest.json") is not None

  # A preempted VM: SIGKILL once checkpoint 2 is committed and step 3 is logged.
  log = open(tmp_path / "killed.log", "w")  # pylint: disable=consider-using-with
  proc = subprocess.Popen(_cli("pbrl_jax.cli.train_main", *tl.REFERENCE_FLAGS), cwd=cwd,
                          env=env, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
  deadline = time.monotonic() + TIMEOUT
  committed = lambda: _object(store, "runs/tiny/checkpoints/2/commit_success.txt") is not None
  while not (committed() and max(_logged_steps(store), default=0) >= 3):
    assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-4000:]
    assert time.monotonic() < deadline, "no checkpoint 2 and step 3 in time"
    time.sleep(0.2)
  os.killpg(proc.pid, 9)
  proc.wait()
  log.close()
  assert _logged_steps(store)[:3] == [1, 2, 3]

  resumed = run(_cli("pbrl_jax.cli.train_main", *tl.REFERENCE_FLAGS))
  assert resumed.returncode == 0, resumed.stderr[-4000:]
  assert "resumed from step 2" in resumed.stderr, resumed.stderr[-4000:]
  rows = _rows(_object(store, "runs/tiny/metrics.jsonl"))
  # The bucket's metrics read as one uninterrupted run, equal to the local reference run's.
  assert tl.strip_times(rows) == reference

  evaluated = run(_cli("pbrl_jax.cli.eval_main"))
  assert evaluated.returncode == 0, evaluated.stderr[-4000:]

  names = _names(store, "runs/tiny/")
  for expected in ("config.json", "metrics.jsonl", "samples.jsonl", "report.md",
                   "reward.png", "pivot/manifest.json", "cache/", "tensorboard/events.",
                   "checkpoints/6/commit_success.txt", "eval/step_6.json", "eval/step_6.md"):
    assert any(n.startswith("runs/tiny/" + expected) for n in names), (expected, names)
  assert [n for n in names if "checkpoints/" in n and n.endswith("/commit_success.txt")
          and n.count("/") == 4] == [f"runs/tiny/checkpoints/{s}/commit_success.txt"
                                     for s in (2, 4, 6)]
  assert not any(".tmp" in n or "probe" in n for n in names), names
  assert os.listdir(cwd) == [] and os.listdir(tmpdir) == []


def test_an_unreachable_bucket_fails_within_a_minute_naming_it(tmp_path):
  env = _env({"env": gcs_emulator.emulator_env(gcs_emulator.free_port())}, tmp_path)
  start = time.monotonic()
  proc = subprocess.run(_cli("pbrl_jax.cli.train_main"), cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120, check=False)
  elapsed = time.monotonic() - start
  assert proc.returncode != 0
  assert f"pbrl-train: {RUN}: " in proc.stderr, proc.stderr[-3000:]
  assert elapsed < 60, elapsed
  assert os.listdir(tmp_path) == []


_SET_ASIDE = r"""
import json, sys
import jax.numpy as jnp
from etils import epath
from pbrl_jax import checkpoint as ckpt_lib
manager = ckpt_lib.make_manager(sys.argv[1], async_save=False)
for step in (2, 4):
  ckpt_lib.save(manager, step, {"w": jnp.full((3,), step, jnp.float32)}, {}, {"step": step})
where = ckpt_lib._set_aside(manager, [4])
moved = sorted(p.name for p in epath.Path(where).iterdir())
print(json.dumps({"steps": sorted(manager.all_steps()), "where": where, "moved": moved}))
"""


def test_an_unusable_checkpoint_is_set_aside_in_a_bucket(store, tmp_path):
  """The corrupt-checkpoint fallback moves the step's directory: in a bucket, every object
  under its prefix (a plain rename finds no such object there)."""
  env = _env(store, tmp_path)
  proc = subprocess.run([sys.executable, "-c", _SET_ASIDE, f"gs://{BUCKET}/aside/checkpoints"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["steps"] == [2]
  assert out["where"] == f"gs://{BUCKET}/aside/checkpoints.unusable"
  assert len(out["moved"]) == 1 and out["moved"][0].startswith("4-")
  names = _names(store, "aside/")
  assert not any(n.startswith("aside/checkpoints/4/") for n in names), names
  assert any(n.startswith("aside/checkpoints.unusable/4-") for n in names), names


_ANOTHER_WRITER = r"""
import json, sys, urllib.parse, urllib.request
from pbrl_jax import fileio
run, upload = sys.argv[1], sys.argv[2]
fileio.atomic_write(run + "/a.txt", "a")
seen = [fileio.listdir(run)]
# Another host writes b.txt straight through the store's API, after our listing.
urllib.request.urlopen(urllib.request.Request(
    upload + urllib.parse.quote(run.split("/", 3)[3] + "/b.txt", safe=""), data=b"b",
    method="POST")).read()
print(json.dumps({"before": seen[0], "exists": fileio.exists(run + "/b.txt"),
                  "after": fileio.listdir(run)}))
"""


def test_objects_another_host_writes_are_seen(store, tmp_path):
  """gcsfs caches listings without expiry; process 0 waiting for the other hosts' pivot
  shards must see objects written after it last listed the directory."""
  upload = (f"http://127.0.0.1:{store['port']}/upload/storage/v1/b/{BUCKET}/o?"
            "uploadType=media&name=")
  proc = subprocess.run([sys.executable, "-c", _ANOTHER_WRITER, f"gs://{BUCKET}/hosts",
                         upload], cwd=tmp_path, env=_env(store, tmp_path),
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out == {"before": ["a.txt"], "exists": True, "after": ["a.txt", "b.txt"]}, out
