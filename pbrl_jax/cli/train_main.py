"""pbrl-train: PB-RLSVR / GRPO / PPO training from a Python config file.

  pbrl-train --config configs/tiny.py --workdir /tmp/run [--config.total_steps=5 ...]

Writes DIR/config.json, DIR/metrics.jsonl, TensorBoard events and DIR/checkpoints/, and
resumes from DIR when a checkpoint is there.
DIR is a local path or a gs://BUCKET/path URL (`pbrl_jax.fileio`).
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from pbrl_jax import fileio


def define_flags() -> None:
  """Defines this command's flags when it runs, so that importing the module defines none."""
  global _CONFIG, _WORKDIR
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if present).")
  flags.mark_flags_as_required(["config", "workdir"])
  fileio.output_flag("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fileio.require_output_dir(_WORKDIR.value, "pbrl-train")
  from pbrl_jax import distributed  # pylint: disable=g-import-not-at-top
  distributed.maybe_initialize()
  from pbrl_jax import train  # pylint: disable=g-import-not-at-top
  train.train_and_report(_CONFIG.value, _WORKDIR.value)


def run():
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
