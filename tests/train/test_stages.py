"""The trainer's stages one by one, on configs/tiny.py (random tiny policy, USE-m3 reward).

Each stage's output is checked against a path that does not go through it: the sampler's
log-probs against the scoring forward, the jitted embeddings against the encoder's host
`encode`, the reward against `score.score_batch` run from scratch, the advantages against the
NumPy loops of tests/rl/rl_numpy_refs.py.
"""

import contextlib
import dataclasses
import gc
import math

import jax
import numpy as np
import pytest

import train_testlib as tl
from rl import rl_numpy_refs as npref
from pbrl_jax import evaluate as eval_lib
from pbrl_jax import metrics as metrics_lib
from pbrl_jax import dynamic_sampling
from pbrl_jax import stages
from pbrl_jax import train as train_lib
from pbrl_jax.models import sharding as shd
from pbrl_jax.rewards import score as score_lib
from pbrl_jax.rl import steps as steps_lib
from pbrl_jax.train_spec import TrainerSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("stages"))
  tl.build_tiny_pivot(workdir)
  spec = TrainerSpec.from_config(tl.tiny_config("grpo"))
  with contextlib.ExitStack() as scope:
    mesh = train_lib.make_mesh(spec)
    scope.enter_context(jax.set_mesh(mesh))
    scope.enter_context(shd.axis_rules())
    r = train_lib.build(spec, mesh, workdir)
    yield r
    r.manager.close()


@pytest.fixture(scope="module")
def step1(run):
  """Every stage's output for step 1 of a fresh run."""
  prompts = stages.PromptBatch.from_loader(next(run.data_iter))
  rollout = stages.rollout_stage(run.fns, run.state, prompts, 1)
  scored = stages.score_stage(run.fns, run.state, prompts, rollout)
  rewards = stages.reward_stage(run.fns, rollout, scored)
  batch = stages.advantage_stage(run.fns, rollout, scored, rewards)
  # The same step draws the same completions (exact resume relies on it), another step not.
  again = stages.rollout_stage(run.fns, run.state, prompts, 1)
  other = stages.rollout_stage(run.fns, run.state, prompts, 2)
  before = [np.array(x) for x in jax.tree.leaves(run.state.params)]
  # The update donates the state it is given: `run.state` must not be used after it.
  run.state, metrics = stages.update_stage(run.fns, run.state, batch)
  return dict(prompts=prompts, rollout=rollout, scored=scored, rewards=rewards, batch=batch,
              again=again, other=other, params_before=before, metrics=metrics)


def test_rollout_rows_are_groups_of_one_prompt_with_their_decoded_text(run, step1):
  p, ro = step1["prompts"], step1["rollout"]
  g = p.group_size
  b, plen = p.prompt_tokens.shape
  # Completions are cut to the longest one's power of two (at least 16, at most the cap).
  longest = int(max(ro.lengths))
  width = min(max(16, 1 << (longest - 1).bit_length()), run.spec.rollout.max_new_tokens)
  assert ro.tokens.shape == (b * g, plen + width)
  for row in range(b * g):
    np.testing.assert_array_equal(ro.tokens[row, :plen], p.prompt_tokens[row // g])
    assert ro.langs[row] == p.langs[row // g]
    completion = ro.tokens[row, plen:][ro.completion_mask[row]]
    assert len(completion) == ro.lengths[row]
    assert ro.texts[row] == run.fns.tokenizer.decode(completion, skip_special_tokens=True)
  np.testing.assert_array_equal(step1["again"].tokens, ro.tokens)
  assert not np.array_equal(step1["other"].tokens, ro.tokens)


def test_scoring_forward_agrees_with_the_sampler_and_the_host_encoder(run, step1):
  ro, sc = step1["rollout"], step1["scored"]
  # A fresh state is the reference policy: the scoring jit's full forward must give the
  # sampler's incremental (KV-cache) log-probs on every completion token.
  ref_logp = np.asarray(sc.outputs["ref_logp"])
  mask = ro.completion_mask
  np.testing.assert_allclose(ref_logp[mask], ro.sampler_logp[mask], rtol=1e-4, atol=1e-5)
  # Policy-side embeddings from the jit equal the encoder's own host `encode` of each segment.
  segs = [score_lib.segments(t, l) for t, l in zip(ro.texts, ro.langs)]
  flat = [s[k] for s in segs for k in score_lib.SEGMENTS]
  host = np.asarray(run.fns.encoder.encode(flat)).reshape(sc.policy_embeddings.shape)
  np.testing.assert_allclose(sc.policy_embeddings, host, rtol=1e-4, atol=1e-6)


def test_off_policy_old_logp_are_the_policy_forwards_not_the_samplers(run, step1):
  """With two updates per batch the sampler's log-probs cannot stand in: the update's old
  log-probs are scoring's policy forward, and the sampler's only feed the mismatch metrics."""
  ro, sc, rw = step1["rollout"], step1["scored"], step1["rewards"]
  spec = run.fns.spec
  fns = dataclasses.replace(run.fns, spec=dataclasses.replace(
      spec, rl=dataclasses.replace(spec.rl, num_epochs=2)))
  assert not stages.scores_policy(spec) and stages.scores_policy(fns.spec)
  mask = ro.completion_mask
  policy_logp = (ro.sampler_logp - 0.25) * mask  # what scoring's policy forward gave
  scored = dataclasses.replace(sc, outputs=dict(sc.outputs, logp=jax.numpy.asarray(policy_logp)))
  batch = stages.advantage_stage(fns, ro, scored, rw)
  np.testing.assert_array_equal(np.asarray(batch.arrays["old_logp"]), policy_logp)
  assert batch.metrics  # the trainer-vs-sampler mismatch is logged off-policy


def test_reward_stage_equals_the_scorer_run_from_scratch(run, step1):
  ro, sc, rw = step1["rollout"], step1["scored"], step1["rewards"]
  # score_batch parses and embeds the policy side itself on the host: no jit, no cached split.
  items = [{k: v for k, v in it.items() if k not in ("response_embeddings", "parsed")}
           for it in sc.items]
  expected = score_lib.score_batch(run.spec.reward, run.fns.reward_models, items)
  np.testing.assert_allclose(rw.rewards, [r["reward"] for r in expected], rtol=1e-4,
                             atol=1e-6)
  assert len(rw.rows) == len(ro.texts)
  np.testing.assert_array_equal(rw.overlong, np.zeros(len(ro.texts)))  # tiny: shaping off


def test_advantages_match_the_numpy_loop_and_update_moves_the_policy(run, step1):
  ro, rw, batch = step1["rollout"], step1["rewards"], step1["batch"]
  rl = run.spec.rl
  g = step1["prompts"].group_size
  ref = {"grpo": lambda r: npref.grpo(r, g, std_floor=rl.std_floor),
         "rloo": lambda r: npref.rloo(r, g),
         "rank": lambda r: npref.rank(r, g)}[rl.advantage.value](rw.shaped)
  expected = ref[:, None] * ro.completion_mask
  np.testing.assert_allclose(np.asarray(batch.arrays["advantages"]), expected, rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_array_equal(np.asarray(batch.arrays["old_logp"]),
                                ro.sampler_logp * ro.completion_mask)  # on-policy GRPO
  m = step1["metrics"]
  assert np.isfinite(m["loss"]) and m["skipped"] == 0.0
  assert abs(m["kl"]) < 1e-6  # the first update starts at the reference
  after = jax.tree.leaves(run.state.params)
  assert any(not np.array_equal(a, b) for a, b in zip(step1["params_before"], after))


def test_step_record_means_are_the_rows_means(run, step1):
  ro, rw = step1["rollout"], step1["rewards"]
  rec = stages.step_record(run.fns, ro, step1["scored"], rw, step1["metrics"])
  assert rec["reward_mean"] == pytest.approx(float(np.mean(rw.rewards)), rel=1e-6)
  assert rec["rollout/mean_length"] == pytest.approx(float(np.mean(ro.lengths)))
  for lang in set(ro.langs):
    sel = [r["reward"] for r, l in zip(rw.rows, ro.langs) if l == lang]
    assert rec[f"lang/{lang}/reward"] == pytest.approx(float(np.mean(sel)), rel=1e-6)
  assert rec["loss"] == step1["metrics"]["loss"]


def test_full_fine_tuning_without_a_kl_term_keeps_no_reference_copy(run, step1, tmp_path):
  """At beta 0 nothing reads the reference policy: `train.build` keeps no frozen copy of it on
  the devices (exactly one model's bytes fewer than the same run with a KL term), and the
  scoring stage runs without one."""

  def build(beta):
    workdir = str(tmp_path / f"beta{beta}")
    tl.build_tiny_pivot(workdir)
    spec = TrainerSpec.from_config(tl.tiny_config("grpo", **{"rl.beta": beta}))
    gc.collect()
    before = sum(a.nbytes for a in jax.live_arrays())
    built = train_lib.build(spec, train_lib.make_mesh(spec), workdir)
    gc.collect()
    return built, sum(a.nbytes for a in jax.live_arrays()) - before

  with_kl, with_kl_bytes = build(0.04)
  lean, lean_bytes = build(0.0)
  try:
    policy_bytes = sum(x.nbytes for x in jax.tree.leaves(with_kl.fns.ref_params))
    assert lean.fns.ref_params is None and policy_bytes > 0
    assert with_kl_bytes - lean_bytes == policy_bytes
    scored = stages.score_stage(lean.fns, lean.state, step1["prompts"], step1["rollout"])
    assert "ref_logp" not in scored.outputs
    np.testing.assert_allclose(scored.policy_embeddings, step1["scored"].policy_embeddings,
                               rtol=1e-5, atol=1e-7)
  finally:
    with_kl.manager.close()
    lean.manager.close()


def test_in_training_evaluation_honours_every_eval_key(run, monkeypatch, tmp_path):
  """The trainer evaluates through `evaluate_spec`, the path `pbrl-eval` takes."""
  seen = {}

  def fake_evaluate(params, config, tokenizer, examples, **kwargs):
    seen.update(kwargs)
    return {"summary": {}}

  monkeypatch.setattr(eval_lib, "evaluate", fake_evaluate)
  config = tl.tiny_config("grpo")
  custom = dict(max_new_tokens=7, batch_size=3, num_samples=4, temperature=0.6, top_p=0.9,
                seed=5, n_boot=11, language_threshold=0.55, repetition_threshold=0.45)
  for k, v in custom.items():
    config.eval[k] = v
  r = train_lib.Run(**{**vars(run), "spec": TrainerSpec.from_config(config),
                       "workdir": str(tmp_path)})
  train_lib._evaluate(r, "probe")  # pylint: disable=protected-access
  assert {k: seen[k] for k in custom} == custom


def test_a_nan_loss_is_skipped_and_counted_like_a_nan_gradient(run, step1, tmp_path):
  """One non-finite policy: a NaN loss (here from NaN advantages, as a NaN reward gives)
  skips the update and counts towards `max_nonfinite_in_row`; the metric writer records it."""
  arrays = dict(step1["batch"].arrays)
  arrays["advantages"] = arrays["advantages"] * np.nan
  before = [np.array(x) for x in jax.tree.leaves(run.state.params)]
  run.state, m = stages.update_stage(
      run.fns, run.state, stages.UpdateBatch(jax.device_put(arrays, run.fns.batch_sharding)))
  assert math.isnan(m["loss"]) and m["skipped"] == 1.0 and m["nonfinite_consecutive"] == 1.0
  for a, b in zip(before, jax.tree.leaves(run.state.params)):
    np.testing.assert_array_equal(a, b)
  assert steps_lib.should_stop(run.state, 1) and not steps_lib.should_stop(run.state, 2)
  writer = metrics_lib.MetricWriter(str(tmp_path))
  writer.write(1, m)
  writer.close()
  assert math.isnan(metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))[0]["loss"])


def test_external_rewards_keep_values_and_add_shaping(run, step1):
  """pbrl-compare's reward stage: the callable's values as given, the trainer's shaping."""
  rollout = step1["rollout"]
  n = len(rollout.texts)
  got = stages.external_rewards(run.fns, rollout, np.arange(n) / n)
  np.testing.assert_array_equal(got.rewards, (np.arange(n) / n).astype(np.float32))
  np.testing.assert_array_equal(got.overlong, step1["rewards"].overlong)
  assert got.rows == ()
  with pytest.raises(ValueError, match="one per completion"):
    stages.external_rewards(run.fns, rollout, np.zeros(n + 1))


def test_informative_groups_and_group_selection_repad_prompts():
  rewards = np.array([0.5, 0.5, 0.1, 0.3, 1.0, 1.0, 0.0, 1e-9])
  want = [len(set(rewards[i:i + 2].tolist())) > 1 for i in range(0, 8, 2)]  # loop reference
  np.testing.assert_array_equal(dynamic_sampling.informative_groups(rewards, 2), want)
  g, pad = 2, 0

  def part(width, offset, m):
    b = 2
    valid = np.zeros((b, width), bool)
    valid[:, -2:] = True  # two real prompt tokens, left-padded
    tokens = np.where(valid, np.arange(b * width).reshape(b, width) + offset, pad)
    prompts = stages.PromptBatch(
        prompt_tokens=tokens.astype(np.int32), prompt_valid=valid, group_size=g,
        ids=tuple(f"q{offset}-{i}" for i in range(b)), langs=("de", "fr"),
        questions=("a", "b"), gold=("1", "2"), reference=("r1", "r2"),
        reference_answer=("1", "2"), ref_emb={"enc/answer": np.arange(b)[:, None] + offset})
    comp = np.arange(b * g * m).reshape(b * g, m) + 1000 + offset
    rows_tokens = np.concatenate([np.repeat(tokens, g, 0), comp], 1).astype(np.int32)
    rows_valid = np.concatenate([np.repeat(valid, g, 0), np.ones((b * g, m), bool)], 1)
    rollout = stages.Rollout(
        tokens=rows_tokens, valid=rows_valid, completion_mask=np.ones((b * g, m), bool),
        sampler_logp=comp.astype(np.float32), texts=tuple(f"t{offset}-{r}" for r in range(4)),
        finished=np.ones(4, bool), lengths=np.full(4, m), langs=("de", "de", "fr", "fr"))
    return prompts, rollout

  # Different prompt widths (4, 6) and completion widths (3, 5): both are widened.
  narrow, wide = part(4, 0, 3), part(6, 100, 5)
  prompts, rollout = dynamic_sampling.select_groups([narrow, wide], [(0, 1), (1, 0)], pad)
  assert prompts.ids == ("q0-1", "q100-0") and prompts.langs == ("fr", "de")
  assert prompts.prompt_tokens.shape == (2, 6) and rollout.tokens.shape == (4, 6 + 5)
  assert rollout.completion_mask.shape == rollout.sampler_logp.shape == (4, 5)
  np.testing.assert_array_equal(prompts.prompt_tokens[0], [pad, pad] + list(narrow[0].prompt_tokens[1]))
  np.testing.assert_array_equal(prompts.prompt_tokens[1], wide[0].prompt_tokens[0])
  np.testing.assert_array_equal(prompts.ref_emb["enc/answer"], [[1], [100]])
  assert rollout.texts == ("t0-2", "t0-3", "t100-0", "t100-1")
  for row, (src, src_row) in enumerate([(narrow, 2), (narrow, 3), (wide, 0), (wide, 1)]):
    # Every row keeps its real tokens and completion; only padding was added around them.
    np.testing.assert_array_equal(rollout.tokens[row][rollout.valid[row]],
                                  src[1].tokens[src_row][src[1].valid[src_row]])
    m = src[1].completion_mask.shape[1]
    np.testing.assert_array_equal(rollout.sampler_logp[row, :m], src[1].sampler_logp[src_row])
    np.testing.assert_array_equal(rollout.sampler_logp[row, m:], 0.0)
    assert rollout.completion_mask[row].sum() == m and not rollout.valid[row, 6 + m:].any()


def test_dynamic_sampling_refills_groups_of_equal_rewards(run, step1):
  prompts, rollout, scored = step1["prompts"], step1["rollout"], step1["scored"]
  rewards = step1["rewards"]
  g, b = prompts.group_size, len(prompts.ids)
  # Group 0 teaches nothing, the others do (the tiny policy's real rewards are mostly 0:
  # reward v2's gates close on random text, so they are forced here).
  forced = dataclasses.replace(rewards, rewards=np.concatenate(
      [np.full(g, 0.25), np.arange(g, b * g) / (b * g)]).astype(np.float32),
      overlong=np.zeros(b * g, np.float32))
  spec = run.fns.spec
  fns = dataclasses.replace(run.fns, spec=dataclasses.replace(
      spec, rl=dataclasses.replace(spec.rl, dynamic_sampling_batches=2)))
  drawn = []

  def next_prompts():
    drawn.append(stages.PromptBatch.from_loader(next(run.data_iter)))
    return drawn[-1]

  out_p, out_ro, _, out_rw, stats = dynamic_sampling.dynamic_sampling_stage(
      fns, run.state, prompts, rollout, scored, forced, 1, next_prompts)
  assert stats["dynamic/informative_frac_first"] == (b - 1) / b
  assert stats["dynamic/extra_batches"] == len(drawn) and 1 <= len(drawn) <= 2
  # Groups 1.. of the first batch come first, with their completions.
  assert out_p.ids[:b - 1] == prompts.ids[1:]
  assert out_ro.texts[:(b - 1) * g] == rollout.texts[g:]
  if stats["dynamic/informative_frac"] == 1.0:  # a drawn batch had an informative group
    assert any(out_p.ids[-1] in d.ids for d in drawn)
    assert dynamic_sampling.informative_groups(out_rw.shaped[-g:], g).all()
  else:  # none in two draws: the first batch's uninformative group fills the slot
    assert stats["dynamic/informative_frac"] == (b - 1) / b and len(drawn) == 2
    assert out_p.ids[-1] == prompts.ids[0]
  # The kept groups' rewards are the very values the selection read (here the forced ones),
  # the drawn group's those of its own batch; the reward layer is not run again.
  np.testing.assert_array_equal(out_rw.rewards[:(b - 1) * g], forced.rewards[g:])
  assert all(a is b for a, b in zip(out_rw.rows[:(b - 1) * g], rewards.rows[g:], strict=True))
  # What re-running the reward on the assembled batch would give: the same real rewards
  # (same texts and references) for every row but the forced ones.
  again = stages.reward_stage(fns, out_ro, stages.score_stage(fns, run.state, out_p, out_ro))
  np.testing.assert_allclose(again.rewards[:(b - 1) * g], rewards.rewards[g:], rtol=1e-5,
                             atol=1e-6)
  if stats["dynamic/informative_frac"] == 1.0:  # the last group came from a drawn batch
    np.testing.assert_allclose(again.rewards[(b - 1) * g:], out_rw.rewards[(b - 1) * g:],
                               rtol=1e-5, atol=1e-6)
  else:  # the first batch's uninformative group, with the rewards it was dropped for
    np.testing.assert_array_equal(out_rw.rewards[(b - 1) * g:], forced.rewards[:g])
  # Nothing to replace: the batch comes back as it was, nothing drawn.
  informative = dataclasses.replace(forced, rewards=np.arange(b * g, dtype=np.float32))
  same = dynamic_sampling.dynamic_sampling_stage(fns, run.state, prompts, rollout, scored, informative,
                                       1, next_prompts)
  assert same[1] is rollout and same[4]["dynamic/extra_batches"] == 0


def test_completion_width_is_the_longest_completions_bucket():
  assert stages.completion_width(np.array([3, 17, 9]), 128) == 32
  assert stages.completion_width(np.array([0, 0]), 128) == 16  # at least one column
  assert stages.completion_width(np.array([64]), 128) == 64
  assert stages.completion_width(np.array([65]), 100) == 100  # never past the cap
  ro = stages.Rollout(
      tokens=np.arange(2 * 7).reshape(2, 7).astype(np.int32),
      valid=np.array([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0]], bool),
      completion_mask=np.array([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], bool),
      sampler_logp=np.arange(10, dtype=np.float32).reshape(2, 5), texts=("a", "b"),
      finished=np.ones(2, bool), lengths=np.array([2, 3]), langs=("de", "de"))
  cut = stages.set_completion_width(ro, 3, pad_id=-1)
  assert cut.tokens.shape == (2, 5) and cut.completion_mask.shape == (2, 3)
  np.testing.assert_array_equal(cut.tokens, ro.tokens[:, :5])
  back = stages.set_completion_width(cut, 5, pad_id=-1)
  np.testing.assert_array_equal(back.valid, ro.valid)
  np.testing.assert_array_equal(back.tokens[:, 5:], -1)
  np.testing.assert_array_equal(back.sampler_logp[:, :3], ro.sampler_logp[:, :3])
  with pytest.raises(ValueError, match="would cut a completion of 3 tokens"):
    stages.set_completion_width(ro, 2, pad_id=-1)


def test_trailing_completion_padding_changes_no_score_advantage_or_update(run, step1):
  """rollout_stage cuts the completion columns past every completion: with 16 more such
  columns, log-probs, rewards, advantages, the update's metrics and the updated parameters
  are the same (up to float32 rounding of other matmul shapes)."""
  p, ro = step1["prompts"], step1["rollout"]
  m = ro.completion_mask.shape[1]
  wide = stages.set_completion_width(ro, m + 16, run.fns.model_cfg.pad_token_id)
  mask = ro.completion_mask
  out = []
  for r in (ro, wide):
    state = jax.tree.map(lambda x: x.copy(), run.state)  # the update donates its input
    sc = stages.score_stage(run.fns, state, p, r)
    rw = stages.reward_stage(run.fns, r, sc)
    batch = stages.advantage_stage(run.fns, r, sc, rw)
    state, metrics = stages.update_stage(run.fns, state, batch)
    out.append(dict(ref_logp=np.asarray(sc.outputs["ref_logp"]), rewards=rw.rewards,
                    adv=np.asarray(batch.arrays["advantages"]), metrics=metrics,
                    params=[np.asarray(x) for x in jax.tree.leaves(state.params)]))
  a, b = out
  comp = lambda x, n: x[:, -n:] if x.shape[1] > n else x  # completion columns of [BG, P+M]
  np.testing.assert_allclose(comp(b["ref_logp"], m + 16)[:, :m][mask],
                             comp(a["ref_logp"], m)[mask], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(a["rewards"], b["rewards"])
  np.testing.assert_allclose(b["adv"][:, :m], a["adv"], rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(b["adv"][:, m:], 0.0)
  for key in ("loss", "kl", "grad_norm"):
    np.testing.assert_allclose(b["metrics"][key], a["metrics"][key], rtol=1e-5, atol=1e-7,
                               err_msg=key)
  # Adam divides each gradient by its own running RMS: an element whose gradient is at
  # float32 rounding level moves by a rounding-sized fraction of a step, so the parameters
  # are compared to 1% of one step (lr); measured: at most 3.9e-6 apart, 42 of 3.1M elements
  # beyond 1e-5 relative.
  lr = run.spec.optim.learning_rate
  for x, y in zip(a["params"], b["params"]):
    np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-2 * lr)
