"""Every shipped training config validates, and bad values fail naming the key."""

import glob
import importlib
import os
import re

import pytest

from pbrl_jax.config_schema import ConfigError
from pbrl_jax.train_spec import TrainerSpec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAINING_CONFIGS = sorted(
    os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
    if not os.path.basename(p).startswith(("_", "common")) and "defaults" not in p)


def test_the_shipped_configs_are_found():
  assert {"tiny", "demo", "llama31_8b_grpo", "llama31_8b_ppo", "qwen3_32b_grpo"} <= set(
      TRAINING_CONFIGS)


@pytest.mark.parametrize("name", TRAINING_CONFIGS)
def test_config_validates(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  for key in ("seed", "total_steps", "checkpoint_every"):
    assert key in config
  spec = TrainerSpec.from_config(config)
  assert spec.run.total_steps >= 1


@pytest.mark.parametrize("key,value,message", [
    ("rl.beta", -1.0, "config.rl.beta"),
    ("rl.advantage", "gae", "config.rl.advantage"),
    ("rollout.top_p", 0.0, "config.rollout.top_p"),
    ("total_steps", 0, "config.total_steps"),
    ("optim.schedule", "linear", "config.optim.schedule"),
    ("data.overlong", "drop", "config.data.overlong"),
    ("data.worker_count", -1, "config.data.worker_count"),
    ("pivot.prompt_template", "no placeholder", "config.pivot.prompt_template"),
    ("pivot.embed_fields", ("response", "summary"), "config.pivot.embed_fields[1]"),
    ("reward.alpha", 1.5, "config.reward.alpha"),
    *[(f"data.gsm_symbolic.{name}", 0, f"config.data.gsm_symbolic.{name}: must be >= 1")
      for name in ("instances_per_template", "max_attempts", "english_trials")],
    *[(f"pivot.{name}", 0, f"config.pivot.{name}: must be >= 1")
      for name in ("max_new_tokens", "batch_size", "shard_size")],
])
def test_bad_values_name_the_key(key, value, message):
  config = importlib.import_module("configs.tiny").get_config()
  node = config
  *path, leaf = key.split(".")
  for p in path:
    node = node[p]
  with node.unlocked() if hasattr(node, "unlocked") else _nullcontext():
    node[leaf] = value
  with pytest.raises(ConfigError, match=re.escape(message)):
    TrainerSpec.from_config(config)


def test_unknown_key_is_named():
  config = importlib.import_module("configs.tiny").get_config()
  config.rl.betta = 0.1
  with pytest.raises(ConfigError, match=r"config\.rl\.betta: unknown key"):
    TrainerSpec.from_config(config)


def test_the_pivot_step_checks_its_sections_before_any_work(tmp_path):
  """`pbrl-pivot` validates `data` and `pivot` as the trainer does, before writing a file."""
  from configs import data_defaults  # pylint: disable=import-outside-toplevel
  from pbrl_jax import pivot_step  # pylint: disable=import-outside-toplevel
  config = data_defaults.get_config()
  config.pivot.shard_sise = 4
  with pytest.raises(ConfigError, match=r"config\.pivot\.shard_sise: unknown key"):
    pivot_step.build(config, str(tmp_path / "w"))
  config = data_defaults.get_config()
  config.data.source = "mgsm"  # a file source with no path
  with pytest.raises(ConfigError, match=r"config\.data\.path: source 'mgsm' reads a file"):
    pivot_step.build(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_every_choice_parses_its_values_and_names_its_kind():
  """The enums a config names by string share one parser; its error lists what is accepted."""
  from pbrl_jax import config_schema, rl  # pylint: disable=import-outside-toplevel,unused-import
  kinds = {cls.__name__: cls for cls in config_schema.Choice.__subclasses__()}
  assert {"AdvantageEstimator", "KLEstimator", "KLPlacement", "Aggregation", "PolicyLoss",
          "ImportanceLevel", "RolloutCorrection", "Schedule"} <= set(kinds)
  for cls in kinds.values():
    for member in cls:
      assert cls.parse(member.value) is member
    with pytest.raises(ValueError) as err:
      cls.parse("no-such")
    assert all(repr(m.value) in str(err.value) for m in cls), err.value
  with pytest.raises(ValueError, match=r"^KL estimator 'k4'; expected one of \['k1'"):
    kinds["KLEstimator"].parse("k4")
  assert kinds["Aggregation"].parse("dr_grpo") is kinds["Aggregation"].CONSTANT  # TRL's name


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *args):
    return False


@pytest.mark.parametrize("algorithm,overrides,uses", [
    ("grpo", {}, True), ("grpo", {"beta": 0.0}, False), ("grpo", {"kl_placement": "none"}, False),
    ("ppo", {}, True), ("ppo", {"beta": 0.0}, False), ("sft", {}, False)])
def test_reference_forward_only_when_a_kl_term_reads_it(algorithm, overrides, uses):
  from configs import rl_defaults  # pylint: disable=import-outside-toplevel
  from pbrl_jax.rl.spec import RLSpec  # pylint: disable=import-outside-toplevel
  section = rl_defaults.get_config(algorithm).rl
  section.update(overrides)
  assert RLSpec.from_config(section).uses_reference is uses


def test_a_mesh_that_does_not_fit_the_devices_names_the_section():
  """The trainer and pbrl-eval build `config.mesh` by one helper, with one message."""
  import jax  # pylint: disable=import-outside-toplevel
  from pbrl_jax import train as train_lib  # pylint: disable=import-outside-toplevel
  from pbrl_jax.cli import eval_main  # pylint: disable=import-outside-toplevel
  config = importlib.import_module("configs.tiny").get_config()
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 3, 1
  message = (rf"config\.mesh: data=1 fsdp=3 tensor=1 does not fit the {jax.device_count()}"
             r" devices: mesh: data\*fsdp\*tensor = 3")
  with pytest.raises(ConfigError, match=message):
    train_lib.make_mesh(TrainerSpec.from_config(config))
  with pytest.raises(ValueError, match=message):
    eval_main.eval_mesh(config)


def test_the_progress_bar_shows_only_what_a_run_logs():
  from pbrl_jax import train as train_lib  # pylint: disable=import-outside-toplevel
  sft = {"loss": 0.6853, "sft/nll": 0.6853}
  assert train_lib._progress_figures(sft) == {"loss": "0.685"}  # pylint: disable=protected-access
  grpo = {"reward_mean": 0.25, "loss": -0.0041, "kl": 0.00529}
  assert train_lib._progress_figures(grpo) == {  # pylint: disable=protected-access
      "reward": "0.250", "loss": "-0.004", "kl": "0.0053"}
