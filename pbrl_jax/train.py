"""The PB-RLSVR trainer: GRPO, PPO or SFT on a multilingual policy, top to bottom.

  pbrl-train --config configs/tiny.py --workdir /tmp/tiny
  pbrl-train --config configs/demo.py --workdir runs/demo

`train`: config -> mesh -> `build` (models, data, step functions, restore) -> `_loop`. One
step of the loop is the stages of `pbrl_jax.stages`:

  prompts -> rollout (jit sampler, G completions per prompt, shared prefill; host rows)
  -> score (one jit dispatched: policy and reference log-probs, values, reward-encoder
     embeddings; the host text scores run meanwhile)
  -> reward (host) -> advantages (jit: group-relative, or GAE for PPO)
  -> update (jit, donated state) -> record -> checkpoint.

Resume is exact: the rollout key of step s is fold_in(seed key, 2s), the data iterator state
and the train state are in the same Orbax checkpoint, so a resumed run replays nothing and
skips nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from typing import Any

import jax
from absl import logging

from pbrl_jax import checkpoint as ckpt_lib
from pbrl_jax import config_schema
from pbrl_jax import distributed
from pbrl_jax import dynamic_sampling
from pbrl_jax import fileio
from pbrl_jax import metrics as metrics_lib
from pbrl_jax import stages
from pbrl_jax.models import bundle as bundle_lib
from pbrl_jax.models import decoder
from pbrl_jax.models import sharding as shd
from pbrl_jax.rl import steps as steps_lib
from pbrl_jax.train_spec import TrainerSpec

Array = jax.Array


# ---------------------------------------------------------------------------------------------
# Preemption: SIGTERM / SIGINT finish the current step, save, and exit cleanly.
# ---------------------------------------------------------------------------------------------


class _StopFlag:
  """Set by SIGTERM/SIGINT; the loop checks it between steps."""

  def __init__(self):
    self.signal: int | None = None
    self._previous: dict[int, Any] = {}

  def install(self) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. a notebook worker): no handler
        pass

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C abandons the step
    self.signal = signum
    logging.warning("received signal %d: finishing this step, saving, exiting", signum)


# ---------------------------------------------------------------------------------------------
# The trainer.
# ---------------------------------------------------------------------------------------------



def train(config: Any, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) training; returns a summary dict.

  Args:
    config: the ml_collections ConfigDict of a config file.
    workdir: run directory; resumed when it holds a checkpoint.

  Returns:
    {'last_step', 'stopped_by', 'workdir'}.
  """
  spec = TrainerSpec.from_config(config)
  fileio.makedirs(workdir)
  if jax.process_index() == 0:
    fileio.atomic_write_json(os.path.join(workdir, "config.json"), config.to_dict(),
                             indent=2, default=str)
  # The mesh and axis-rule contexts entered while training are left on every exit, also
  # when a bad config or a missing file raises half-way (tests call train() in-process).
  with contextlib.ExitStack() as scope:
    mesh = make_mesh(spec)
    # Trace every step under the mesh and the logical axis rules, so the decoder's activation
    # constraints apply (without them FSDP gathers whole batches onto every device).
    scope.enter_context(jax.set_mesh(mesh))
    scope.enter_context(shd.axis_rules())
    return _loop(build(spec, mesh, workdir))


def make_mesh(spec: TrainerSpec) -> Any:
  """The device mesh of `config.mesh`; errors say which key does not fit the devices."""
  try:
    mesh = shd.mesh_from_config(spec.mesh)
  except ValueError as e:
    raise config_schema.ConfigError(str(e)) from e
  data_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  rows = spec.pipeline.global_batch_size * spec.pipeline.group_size
  if rows % data_devices:
    raise config_schema.ConfigError(
        f"config.data.global_batch_size: {spec.pipeline.global_batch_size} prompts x"
        f" group_size {spec.pipeline.group_size} = {rows} sequences do not split over the"
        f" mesh's {data_devices} data-parallel devices (mesh.data x mesh.fsdp)")
  return mesh


@dataclasses.dataclass
class Run:
  """What the loop works on: the step functions, the state and where the run stands."""

  spec: TrainerSpec
  workdir: str
  fns: stages.StepFns
  state: Any  # steps.TrainState on the mesh
  start_step: int
  data_iter: Any  # grain iterator (its state is checkpointed with the train state)
  manager: Any  # Orbax CheckpointManager
  eval_examples: list[Any]


def build(spec: TrainerSpec, mesh: Any, workdir: str) -> Run:
  """Models, data, step functions and the (restored or fresh) train state of a run."""
  from pbrl_jax.rewards import score as score_lib  # pylint: disable=g-import-not-at-top
  run = spec.run
  # Read straight into the state's shardings: no host ever holds the whole model.
  model_cfg, ref_params, tokenizer = bundle_lib.load_policy(spec.model, run.seed, mesh)
  reward_models = (score_lib.RewardModels(encoder=None) if spec.rl.is_sft
                   else score_lib.load_reward_models(spec.reward))
  logging.info("policy: %s, %d layers, %.1fM params", model_cfg.model_type,
               model_cfg.num_layers, decoder.count_params(ref_params) / 1e6)
  data_iter, eval_examples = _load_data(spec, workdir, tokenizer)

  # LoRA: the state holds adapters only; `ref_params` is then also the frozen base.
  optimizer, lora, state_fns = stages.make_state_fns(spec, model_cfg, mesh)
  # A no-op unless the loader's shardings differ from the state's (they are built alike).
  ref_params = jax.device_put(ref_params, state_fns.policy_shardings)
  base_key = jax.random.PRNGKey(run.seed)
  # Full fine-tuning without a KL term reads no reference: the steps get none, and the loaded
  # params are freed once the state has its own copy (one model's bytes less on the devices).
  keeps_reference = lora is not None or spec.rl.uses_reference
  fns = stages.build_step_fns(spec, mesh, model_cfg, tokenizer, reward_models,
                              ref_params if keeps_reference else None, state_fns, optimizer,
                              lora, base_key)

  manager = ckpt_lib.make_manager(os.path.join(workdir, "checkpoints"),
                                  max_to_keep=run.keep_checkpoints,
                                  async_save=run.async_checkpoint)
  abstract_state = ckpt_lib.abstract_with_shardings(
      jax.eval_shape(state_fns.from_params, ref_params, base_key), state_fns.shardings)
  restored = ckpt_lib.restore_latest(manager, abstract_state)
  if restored is not None:
    state, start_step = restored.state, restored.step
    data_iter.set_state(restored.data_state.encode())
    logging.info("resumed from step %d", start_step)
  else:
    state, start_step = state_fns.from_params(ref_params, jax.random.fold_in(base_key, 1)), 0
  return Run(spec=spec, workdir=workdir, fns=fns, state=state, start_step=start_step,
             data_iter=data_iter, manager=manager, eval_examples=eval_examples)


def _load_data(spec: TrainerSpec, workdir: str, tokenizer: Any) -> tuple[Any, list[Any]]:
  """The training iterator (prompts joined with their pivot references) and eval examples."""
  from pbrl_jax import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
  from pbrl_jax.data import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
  from pbrl_jax.data import pivot as pivot_lib  # pylint: disable=g-import-not-at-top
  from pbrl_jax.data import sources  # pylint: disable=g-import-not-at-top
  ref_dir = pivot_lib.reference_dir(workdir)
  if not fileio.exists(os.path.join(ref_dir, pivot_lib.MANIFEST)):
    raise FileNotFoundError(
        f"no pivot references in {ref_dir}: build them first with `pbrl-pivot --config ..."
        f" --workdir {workdir}` (add --oracle for gsm_symbolic's English solutions, or"
        " --references=FILE.jsonl to import references made elsewhere)")
  references = pivot_lib.load_references(ref_dir)
  source = sources.load_source(spec.data, workdir)
  manifest = pivot_lib.load_manifest(ref_dir)
  if manifest.get("source_sha256") != source.sha256:
    logging.warning(
        "the pivot references in %s were built from %r (sha256 %s), the data section now gives"
        " %r (sha256 %s); questions without a reference are handled by"
        " data.missing_reference=%r", ref_dir, manifest.get("source"),
        manifest.get("source_sha256"), source.description, source.sha256,
        spec.data.missing_reference)
  encoder_name = spec.reward.encoder
  if (encoder_name not in manifest.get("encoders", {}) and spec.reward.uses_encoder
      and not spec.rl.is_sft):  # SFT scores nothing
    logging.warning("the pivot references cache no %r embeddings (they have %s); the"
                    " reference side is embedded during training", encoder_name,
                    sorted(manifest.get("encoders", {})))
  elements, join_stats = pipeline_lib.join(source.targets, references,
                                           spec.data.missing_reference)
  logging.info("training prompts: %d joined (%s)", len(elements), join_stats)
  # Every host iterates the same global stream and holds the whole (small, text) batch: the
  # bucket shapes then agree across hosts, and a run gives the same batches on any number of
  # hosts. Device arrays are built from it slice by slice (distributed.global_from_host).
  data_iter = iter(pipeline_lib.make_loader(elements, tokenizer, spec.pipeline))
  eval_examples = []
  if spec.run.eval_before_after or spec.run.eval_every:
    for ds in spec.eval.datasets:
      eval_examples.extend(eval_lib.load_dataset(ds, workdir))
  return data_iter, eval_examples


def _evaluate(r: Run, tag: str) -> dict[str, Any]:
  """Evaluates the current policy with every setting of the `eval` section (as `pbrl-eval`)."""
  from pbrl_jax import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
  params, adapters, scale = r.fns.policy(r.state)
  result = eval_lib.evaluate_spec(
      params, r.fns.model_cfg, r.fns.tokenizer, r.eval_examples, r.spec.eval,
      trained_langs=tuple(r.spec.data.langs), mesh=r.fns.mesh, lora=adapters,
      lora_scale=scale)
  if jax.process_index() == 0:
    fileio.atomic_write_json(os.path.join(r.workdir, f"eval_{tag}.json"), result, indent=2,
                             default=str)
  return result


# The progress bar's figures: (metric key, format). A run shows those it logs (SFT logs
# neither a reward nor a KL; formatting them as nan suggested a fault).
_PROGRESS_FIGURES = {"reward": ("reward_mean", ".3f"), "loss": ("loss", ".3f"),
                     "kl": ("kl", ".4f")}


def _progress_figures(record: dict[str, Any]) -> dict[str, str]:
  return {name: format(record[key], fmt) for name, (key, fmt) in _PROGRESS_FIGURES.items()
          if key in record}


def _loop(r: Run) -> dict[str, Any]:
  """Steps from `r.start_step` to `total_steps`, checkpointing, until done or stopped."""
  import psutil  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  spec, fns, run = r.spec, r.fns, r.spec.run
  g = spec.pipeline.group_size
  writer = metrics_lib.MetricWriter(r.workdir, resume_step=r.start_step)
  stop = _StopFlag()
  stop.install()
  if r.start_step == 0 and run.eval_before_after and r.eval_examples:
    _evaluate(r, "before")
  process_info = psutil.Process()
  progress = tqdm(total=run.total_steps, initial=r.start_step, desc="train", unit="step",
                  disable=jax.process_index() != 0, dynamic_ncols=True)
  stopped_by, step = "total_steps", r.start_step
  timer = metrics_lib.StepTimer()
  try:
    while step < run.total_steps:
      step += 1
      step_start = time.perf_counter()
      with timer.span("data"):
        prompts = stages.PromptBatch.from_loader(next(r.data_iter))
      with timer.span("rollout"):
        rollout = stages.rollout_stage(fns, r.state, prompts, step)
      scored = stages.score_stage(fns, r.state, prompts, rollout, timer)  # host_text, scoring
      with timer.span("reward"):
        rewards = stages.reward_stage(fns, rollout, scored)
      dynamic = {}
      if spec.rl.dynamic_sampling_batches:
        with timer.span("dynamic_sampling"):  # its extra rollouts and scoring passes
          prompts, rollout, scored, rewards, dynamic = dynamic_sampling.dynamic_sampling_stage(
              fns, r.state, prompts, rollout, scored, rewards, step,
              lambda: stages.PromptBatch.from_loader(next(r.data_iter)))
      with timer.span("advantages"):
        batch = stages.advantage_stage(fns, rollout, scored, rewards)
      with timer.span("update"):
        r.state, update_metrics = stages.update_stage(fns, r.state, batch)

      record = stages.step_record(fns, rollout, scored, rewards, update_metrics)
      record.update(dynamic)
      record.update(timer.pop())
      record["time/step"] = time.perf_counter() - step_start
      # Resident host memory: a leak shows up here long before a multi-day run is killed.
      # Like time/*, it differs between otherwise identical runs.
      record["host/rss_mb"] = process_info.memory_info().rss / 2**20
      writer.write(step, record)
      if rewards.rows:
        writer.write_samples(step, stages.sample_records(rollout, rewards, g))
        if run.sample_every and step % run.sample_every == 0:
          writer.write_text(step, "samples", stages.sample_text(rollout, rewards, g))
      progress.set_postfix(_progress_figures(record), refresh=False)
      progress.update(1)
      if run.eval_every and step % run.eval_every == 0 and r.eval_examples:
        _evaluate(r, f"step{step}")

      if steps_lib.should_stop(r.state, run.max_nonfinite_in_row):
        stopped_by = "nonfinite"
        raise FloatingPointError(
            f"step {step}: {run.max_nonfinite_in_row} updates in a row had a non-finite loss"
            " or gradient and were skipped; stopping. The last checkpoint holds the last good"
            " state.")
      # A signal may reach some workers only: every host must leave at the same step.
      stopping = distributed.any_host(stop.signal is not None)
      if step % run.checkpoint_every == 0 or step == run.total_steps or stopping:
        with timer.span("checkpoint"):
          ckpt_lib.save(r.manager, step, r.state, r.data_iter.get_state().decode(),
                        {"step": step, "time": time.time()})
      if stopping:
        stopped_by = f"signal {stop.signal}" if stop.signal is not None else "signal (peer)"
        break
  finally:
    progress.close()
    ckpt_lib.wait(r.manager)
    writer.close()
    stop.restore()
    r.manager.close()

  if stopped_by == "total_steps" and run.eval_before_after and r.eval_examples:
    _evaluate(r, "after")
  return {"last_step": step, "stopped_by": stopped_by, "workdir": r.workdir}


def train_and_report(config: Any, workdir: str) -> dict[str, Any]:
  """`train`, then the run report (process 0)."""
  from pbrl_jax import report  # pylint: disable=g-import-not-at-top
  summary = train(config, workdir)
  if jax.process_index() == 0:
    path = report.write_report(workdir)
    logging.info("report: %s", path)
    summary["report"] = path
  return summary
