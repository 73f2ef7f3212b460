"""`make demo`: write the problems, import the oracle pivot references, train, evaluate, report.

  python -m pbrl_jax.demo --workdir runs/demo [--config configs/demo.py]

Everything runs offline on the CPU from packages installed by the Makefile. A finished run in
the same workdir is not repeated: its report is shown again.
"""

import os
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags


def define_flags() -> None:
  """Defines this command's flags when it runs, so that importing the module defines none."""
  global _CONFIG, _WORKDIR
  _CONFIG = config_flags.DEFINE_config_file(
      "config", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "configs", "demo.py"), "Demo config file.")
  _WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Run directory.")


# Training problems the demo writes, each in every language: 64 x 4 training languages is
# more prompts than 40 steps of 2 read, so no prompt repeats.
N_TRAIN_PROBLEMS = 64


def _fill_workdir(config, workdir: str) -> None:
  """Replaces the `{workdir}` placeholder of the data and eval paths with the run directory."""
  config.data.path = config.data.path.replace("{workdir}", workdir)
  for ds in config.eval.datasets:
    ds["path"] = ds["path"].replace("{workdir}", workdir)


def prepare(config, workdir: str) -> None:
  """Writes the arithmetic problems and imports their English solutions as the references.

  Fills the `{workdir}` placeholders of `config` first; skipped when the references exist.
  """
  from pbrl_jax.cli import pivot_main  # pylint: disable=g-import-not-at-top
  from pbrl_jax.data import arith  # pylint: disable=g-import-not-at-top
  from pbrl_jax.data import pivot as pivot_lib  # pylint: disable=g-import-not-at-top
  os.makedirs(workdir, exist_ok=True)
  _fill_workdir(config, workdir)
  if os.path.exists(os.path.join(pivot_lib.reference_dir(workdir), pivot_lib.MANIFEST)):
    return
  print("[demo] writing the arithmetic problems and importing their English worked "
        "solutions as the pivot references (oracle pivot) ...", flush=True)
  # Every language the problems exist in: training reads `data.langs`, evaluation its own.
  n_test = max(int(ds["limit"]) for ds in config.eval.datasets)
  paths = arith.write_split(os.path.join(workdir, "data"), langs=arith.LANGS,
                            n_train=N_TRAIN_PROBLEMS, n_test=n_test)
  pivot_main.build(config, workdir, references=paths["train_references"])


def main(argv):
  del argv
  from pbrl_jax import train  # pylint: disable=g-import-not-at-top
  config, workdir = _CONFIG.value, _WORKDIR.value
  t0 = time.perf_counter()
  prepare(config, workdir)
  print(f"[demo] pivot references ready ({time.perf_counter() - t0:.0f} s); training GRPO "
        f"for {config.total_steps} steps ...", flush=True)
  summary = train.train_and_report(config, workdir)
  total = time.perf_counter() - t0
  print(f"\n[demo] done in {total / 60:.1f} min: {summary['stopped_by']} at step "
        f"{summary['last_step']}")
  print(f"[demo] report: {os.path.join(workdir, 'report.md')}")
  print(f"[demo] metrics: {os.path.join(workdir, 'metrics.jsonl')}; TensorBoard: "
        f"tensorboard --logdir {os.path.join(workdir, 'tensorboard')}")


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  define_flags()
  app.run(main)
