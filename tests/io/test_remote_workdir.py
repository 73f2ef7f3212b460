"""Output flags that take no bucket refuse a URL before any work; the others refuse schemes
they cannot write.

pbrl-pivot, pbrl-train and pbrl-eval write their run directory through `pbrl_jax.fileio`,
gs:// included (tests/io/test_gcs_workdir.py). The demo, pbrl-compare, pbrl-score and
pbrl-eval's --export_hf write with local file calls, so a URL there used to become a local
folder named 'gs:' (lost with a preempted VM) while the log said "written to gs://...": each
now fails at flag parsing, names the flag and the URL, and leaves nothing behind. (A bucket
mounted with gcsfuse is a local path; launch/tpu_pod.sh can mount one,
tests/scale/test_launch_script.py.)
"""

import os
import subprocess
import sys

import pytest

from pbrl_jax import fileio

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")
URL = "gs://bucket/run"


@pytest.mark.parametrize("path,remote", [
    ("gs://bucket/run", True), ("s3://b/x", True), ("file:///tmp/x", True),
    ("/tmp/run", False), ("runs/demo", False), ("gs:/bucket", False), ("a:b", False),
    ("", False), (None, False)])
def test_is_url(path, remote):
  assert fileio.is_url(path) is remote


@pytest.mark.parametrize("module,args,flag", [
    ("pbrl_jax.cli.eval_main", ["--config", TINY, "--workdir", "w", "--export_hf", URL],
     "export_hf"),
    ("pbrl_jax.demo", ["--workdir", URL], "workdir"),
    ("pbrl_jax.cli.compare_main", ["--quick", "--out", URL], "out"),
    ("pbrl_jax.cli.score_main", ["--config", TINY, "--input", "in.jsonl",
                                 "--output", URL + "/s.jsonl"], "output")])
def test_a_remote_output_is_refused_before_any_work(tmp_path, module, args, flag):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0
  assert f"--{flag}={URL}" in proc.stderr and "remote stores" in proc.stderr, proc.stderr[-2000:]
  assert os.listdir(tmp_path) == []  # no local folder named 'gs:', nothing else either


@pytest.mark.parametrize("module", ["pbrl_jax.cli.pivot_main", "pbrl_jax.cli.train_main",
                                    "pbrl_jax.cli.eval_main"])
def test_a_scheme_without_a_writer_is_refused_before_any_work(tmp_path, module):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-m", module, "--config", TINY, "--workdir",
                         "s3://bucket/run"], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=120, check=False)
  assert proc.returncode != 0
  assert "--workdir=s3://bucket/run" in proc.stderr and "gs://" in proc.stderr, proc.stderr
  assert os.listdir(tmp_path) == []
