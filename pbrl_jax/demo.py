"""`make demo`: build the oracle pivot references, train, evaluate before/after, report.

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


def main(argv):
  del argv
  from pbrl_jax import train  # pylint: disable=g-import-not-at-top
  from pbrl_jax.cli import pivot_main  # pylint: disable=g-import-not-at-top
  from pbrl_jax.data import pivot as pivot_lib  # pylint: disable=g-import-not-at-top
  config, workdir = _CONFIG.value, _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  t0 = time.perf_counter()
  if not os.path.exists(os.path.join(pivot_lib.reference_dir(workdir), pivot_lib.MANIFEST)):
    print("[demo] building the oracle pivot references (English solutions of the same "
          "instances) ...", flush=True)
    pivot_main.build(config, workdir, oracle=True)
  t_pivot = time.perf_counter() - t0
  print(f"[demo] pivot references ready ({t_pivot:.0f} s); training GRPO for "
        f"{config.total_steps} steps ...", flush=True)
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
