"""pbrl-pivot: build the English pivot references for a config's data source.

  pbrl-pivot --config configs/data_defaults.py --workdir DIR                 # pivot model
  pbrl-pivot --config configs/data_defaults.py --workdir DIR --references=refs.jsonl
  pbrl-pivot --config configs/data_defaults.py --workdir DIR --oracle        # gsm_symbolic

Writes DIR/pivot/ (ArrayRecord shards, per-shard `.done` markers, manifest.json; see
`pbrl_jax.data.pivot`; the work is `pbrl_jax.pivot_step.build`). Re-running resumes:
finished shards that verify are kept. With several JAX processes each builds the shards i
with i % process_count == process_index and process 0 writes the manifest.
DIR is a local path or a gs://BUCKET/path URL (`pbrl_jax.fileio`).

`--oracle` (gsm_symbolic only) writes DIR/oracle_references.jsonl, the English worked
solutions of the same instances, and imports it: the demo's pivot, since no strong pivot LLM
runs on a laptop CPU.
"""

from __future__ import annotations

from absl import app
from absl import flags
from ml_collections import config_flags

from pbrl_jax import fileio


def define_flags() -> None:
  """Defines this command's flags when it runs, so that importing the module defines none."""
  global _CONFIG, _WORKDIR, _REFERENCES, _ORACLE
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
  _REFERENCES = flags.DEFINE_string("references", None,
                                    "Import this JSONL (id, question, response, optional answer) "
                                    "instead of running the pivot model.")
  _ORACLE = flags.DEFINE_bool("oracle", False,
                              "gsm_symbolic: use the English worked solutions as references.")
  flags.mark_flags_as_required(["config", "workdir"])
  fileio.output_flag("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fileio.require_output_dir(_WORKDIR.value, "pbrl-pivot")
  index, count = 0, 1
  if _REFERENCES.value is None and not _ORACLE.value:
    # Only the model path runs JAX; an import needs no accelerator and no cluster.
    from pbrl_jax import distributed  # pylint: disable=g-import-not-at-top
    distributed.maybe_initialize()
    import jax  # pylint: disable=g-import-not-at-top
    index, count = jax.process_index(), jax.process_count()
  from pbrl_jax import pivot_step  # pylint: disable=g-import-not-at-top
  pivot_step.build(_CONFIG.value, _WORKDIR.value, _REFERENCES.value, _ORACLE.value, index,
                   count)


def run():
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
