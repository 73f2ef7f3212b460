"""Bad configs fail with an error naming the dotted key, before any model load or compile.

Each case runs the real `train.train` entry in process with the model loader replaced by a
tripwire, and a JAX monitoring listener that records every backend compile: a bad config
must raise ConfigError before either is reached.
"""

import os
import subprocess
import time

import jax
import ml_collections
import pytest

import faults_testlib as fl
from pbrl_jax import config_schema
from pbrl_jax import train as train_lib
from pbrl_jax.models import bundle as bundle_lib

_COMPILES = []


def _on_event(event, duration, **kwargs):  # pylint: disable=unused-argument
  if "compile" in event:
    _COMPILES.append(event)


jax.monitoring.register_event_duration_secs_listener(_on_event)


def _config(arg="grpo", edit=None):
  """The tiny config as a plain dict edited freely (type errors included), then rebuilt."""
  d = fl.tl.tiny_config(arg).to_dict()
  if edit is not None:
    edit(d)
  return ml_collections.ConfigDict(d)


def _set(path, value):
  def edit(d):
    node = d
    *parents, last = path.split(".")
    for p in parents:
      node = node[p]
    node[last] = value
  return edit


CASES = [
    ("unknown top-level key", "grpo", _set("totl_steps", 5), r"config\.totl_steps: unknown key"),
    ("unknown nested key", "grpo", _set("rl.betta", 0.1), r"config\.rl\.betta: unknown key"),
    ("wrong type", "grpo", _set("total_steps", "ten"), r"config\.total_steps: expected an int"),
    ("wrong nested type", "grpo", _set("rollout.temperature", "hot"),
     r"config\.rollout\.temperature"),
    ("PPO with a GRPO advantage", "ppo", _set("rl.advantage", "grpo"), r"config\.rl\.advantage"),
    ("GRPO with GAE (needs a value head)", "grpo", _set("rl.advantage", "gae"),
     r"config\.rl\.advantage"),
    ("KL in the reward without a critic", "grpo", _set("rl.kl_placement", "reward"),
     r"config\.rl\.kl_placement"),
    # 8 prompts x G 1 still split over the 8 test devices: only G is wrong.
    ("G = 1 with GRPO", "grpo",
     lambda d: (_set("data.group_size", 1)(d), _set("data.global_batch_size", 8)(d)),
     r"config\.data\.group_size"),
    ("batch not divisible by the mesh", "grpo", _set("data.global_batch_size", 3),
     r"config\.data\.global_batch_size"),
    ("mesh factors that do not fit the devices", "grpo", _set("mesh.fsdp", 3), r"config\.mesh"),
    ("mesh factor < 1", "grpo", _set("mesh.tensor", 0), r"config\.mesh\.tensor"),
    ("zero steps", "grpo", _set("total_steps", 0), r"config\.total_steps"),
    ("zero checkpoint interval", "grpo", _set("checkpoint_every", 0),
     r"config\.checkpoint_every"),
    # The data, pivot and reward sections go through the same schema as the others.
    ("unknown data key", "grpo", _set("data.sorce", "mgsm"), r"config\.data\.sorce: unknown"),
    ("data source that is none", "grpo", _set("data.source", "hub"),
     r"config\.data\.source: 'hub' is not one of"),
    ("nested data type", "grpo", _set("data.gsm_symbolic.seed", "zero"),
     r"config\.data\.gsm_symbolic\.seed: expected an integer"),
    ("pivot type", "grpo", _set("pivot.shard_size", "big"), r"config\.pivot\.shard_size"),
    ("unknown pivot key", "grpo", _set("pivot.encoder", "use_m3"),
     r"config\.pivot\.encoder: unknown"),
    ("reward guard out of range", "grpo", _set("reward.guards.copy_hi", 2.0),
     r"config\.reward\.guards\.copy_hi: 2\.0 must be"),
]


@pytest.mark.parametrize("name,arg,edit,match", CASES, ids=[c[0] for c in CASES])
def test_bad_config_names_the_key_before_compile(tmp_path, monkeypatch, name, arg, edit,
                                                 match):
  def tripwire(*args, **kwargs):
    raise AssertionError(f"{name}: the model was loaded before the config was rejected")

  monkeypatch.setattr(bundle_lib, "load_policy", tripwire)
  config = _config(arg, edit)
  _COMPILES.clear()
  with pytest.raises(config_schema.ConfigError, match=match):
    train_lib.train(config, str(tmp_path / "run"))
  assert not _COMPILES, f"{name}: compiled {_COMPILES} before rejecting the config"
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_good_config_reaches_the_model_loader(tmp_path, monkeypatch):
  """The tripwire is live: a valid config gets past validation to the model loader."""
  def tripwire(*args, **kwargs):
    raise RuntimeError("reached the model loader")

  monkeypatch.setattr(bundle_lib, "load_policy", tripwire)
  with pytest.raises(RuntimeError, match="reached the model loader"):
    train_lib.train(_config(), str(tmp_path / "run"))


def test_cli_rejects_bad_value_quickly(tmp_path):
  start = time.monotonic()
  proc = subprocess.run(fl.tl.train_cmd(str(tmp_path / "run"), "--config.total_steps=-1"),
                        env=fl.tl.cli_env(), capture_output=True, text=True, timeout=300,
                        cwd=fl.REPO)
  assert proc.returncode != 0
  assert "ConfigError: config.total_steps: must be >= 1, got -1" in proc.stderr, \
      proc.stderr[-3000:]
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
  print(f"CLI rejected the config in {time.monotonic() - start:.1f}s")
