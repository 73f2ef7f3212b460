"""pbrl-eval on an MGSM-layout fixture with a tiny HF model: base model, a trainer checkpoint
(policy params restored from Orbax), the JSON, the markdown report and its plots, --compare."""

import json
import os
import textwrap
import types

import jax
import numpy as np
import optax
import pytest
from absl import flags

from pbrl_jax import checkpoint as ckpt_lib
from pbrl_jax.cli import eval_main
from pbrl_jax.models import sharding as shd
from pbrl_jax.rl import steps as steps_lib

import eval_testlib as tl

LANGS = ("en", "de", "th")


def _run(argv):
  fl = flags.FLAGS
  if "checkpoint_step" not in fl:  # the CLI defines its flags when it runs
    eval_main.define_flags()
  fl.unparse_flags()
  try:
    fl(["pbrl-eval"] + argv)
    eval_main.main(["pbrl-eval"])
  finally:
    fl.unparse_flags()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval_cli")
  model_dir, config, _ = tl.tiny_model_dir(str(root / "model"))
  mgsm = tl.write_mgsm_dir(str(root / "mgsm"), LANGS)
  cfg = root / "eval_config.py"
  cfg.write_text(textwrap.dedent(f"""
      import ml_collections
      from configs import eval_defaults

      def get_config():
        c = ml_collections.ConfigDict()
        c.model = ml_collections.ConfigDict({{"path": {model_dir!r}}})
        c.eval = eval_defaults.get_config()
        c.eval.datasets = [dict(kind="mgsm", path={mgsm!r}, langs=["en", "de", "th"],
                                limit=0, name="mgsm")]
        c.eval.max_new_tokens = 8
        c.eval.batch_size = 4
        c.eval.n_boot = 100
        c.data = ml_collections.ConfigDict({{"langs": ["de"]}})
        return c
      """))
  return root, str(cfg), config


@pytest.mark.slow
def test_base_checkpoint_and_compare(setup):
  root, cfg, config = setup
  workdir = str(root / "run")

  # 1. No checkpoint yet: the base model.
  _run([f"--config={cfg}", f"--workdir={workdir}"])
  base = json.load(open(os.path.join(workdir, "eval", "base.json"), encoding="utf-8"))
  res = base["datasets"]["mgsm"]
  assert {k: v["n"] for k, v in res["per_language"].items()} == {l: 3 for l in LANGS}
  assert res["per_language"]["de"]["trained"] and not res["per_language"]["th"]["trained"]
  assert base["model"]["checkpoint_step"] is None and base["trained_langs"] == ["de"]
  assert len(res["records"]) == 9
  assert {r["id"] for r in res["records"]} == {"mgsm/0", "mgsm/1", "mgsm/2"}
  assert all(0 <= v["accuracy"] <= 1 for v in res["per_language"].values())
  md = open(os.path.join(workdir, "eval", "base.md"), encoding="utf-8").read()
  for png in ("base_mgsm_accuracy.png", "base_mgsm_gap.png"):
    assert f"({png})" in md
    assert os.path.getsize(os.path.join(workdir, "eval", png)) > 1000
  assert "| th |" in md and "| de | yes |" in md

  # 2. A trainer checkpoint (the real TrainState, sharded over 8 devices, saved by the
  #    trainer's checkpoint module) with other policy weights.
  mesh = shd.make_mesh()
  fns = steps_lib.make_state_fns(config, optax.adam(1e-3), mesh, with_value_head=False)
  trained = tl.tiny_params(config, seed=1)
  state = fns.from_params(trained, jax.random.PRNGKey(0))
  manager = ckpt_lib.make_manager(os.path.join(workdir, "checkpoints"), async_save=False)
  ckpt_lib.save(manager, 5, state, {"position": 3}, {"step": 5})
  ckpt_lib.wait(manager)
  manager.close()
  assert ckpt_lib.checkpoint_steps(workdir) == [5]
  restored = ckpt_lib.restore_params(
      workdir, 5, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), trained))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               restored, trained)

  _run([f"--config={cfg}", f"--workdir={workdir}"])
  after = json.load(open(os.path.join(workdir, "eval", "step_5.json"), encoding="utf-8"))
  assert after["model"]["checkpoint_step"] == 5
  responses = lambda r: [x["response"] for x in r["datasets"]["mgsm"]["records"]]
  assert responses(after) != responses(base)  # the checkpoint's weights were used

  # --params_from with the same weights as an HF directory gives the same answers.
  tl.tiny_model_dir(str(root / "model_seed1"), seed=1)
  _run([f"--config={cfg}", f"--workdir={workdir}", f"--params_from={root / 'model_seed1'}"])
  hf = json.load(open(os.path.join(workdir, "eval", "model_seed1.json"), encoding="utf-8"))
  assert responses(hf) == responses(after)

  # --base forces the base model even with a checkpoint present.
  _run([f"--config={cfg}", f"--workdir={workdir}", "--base", "--name=base2"])
  again = json.load(open(os.path.join(workdir, "eval", "base2.json"), encoding="utf-8"))
  assert responses(again) == responses(base)

  # --model evaluates any HF directory directly (here the base model's own).
  _run([f"--config={cfg}", f"--workdir={workdir}", f"--model={root / 'model'}"])
  direct = json.load(open(os.path.join(workdir, "eval", "model.json"), encoding="utf-8"))
  assert responses(direct) == responses(base)
  assert direct["model"]["source"] == str(root / "model")

  with pytest.raises(ValueError, match="not among the checkpoints"):
    _run([f"--config={cfg}", f"--workdir={workdir}", "--checkpoint_step=7"])

  # 3. Before/after report from the two JSONs.
  ev_dir = os.path.join(workdir, "eval")
  _run([f"--workdir={workdir}",
        f"--compare={os.path.join(ev_dir, 'base.json')},{os.path.join(ev_dir, 'step_5.json')}"])
  md = open(os.path.join(ev_dir, "compare.md"), encoding="utf-8").read()
  assert "base vs step_5" in md and "Δ acc" in md
  for png in ("compare_mgsm_accuracy.png", "compare_mgsm_gap.png"):
    assert os.path.getsize(os.path.join(ev_dir, png)) > 1000


def _assert_sharding(array, sharding):
  assert array.sharding.is_equivalent_to(sharding, array.ndim), (array.sharding, sharding)


@pytest.mark.slow
def test_a_checkpoint_is_evaluated_sharded_over_the_config_mesh(setup, monkeypatch):
  """With several devices, pbrl-eval reads the base and the checkpoint straight into the
  trainer's shardings over `config.mesh` and answers as the single-device path does."""
  root, cfg, config = setup
  workdir = str(root / "sharded")
  trained = tl.tiny_params(config, seed=2)
  mesh = shd.make_mesh(1, 4, 2)
  fns = steps_lib.make_state_fns(config, optax.adam(1e-3), mesh, with_value_head=False)
  manager = ckpt_lib.make_manager(os.path.join(workdir, "checkpoints"), async_save=False)
  ckpt_lib.save(manager, 3, fns.from_params(trained, jax.random.PRNGKey(0)), {"position": 0},
                {"step": 3})
  ckpt_lib.wait(manager)
  manager.close()
  # The restore alone: each weight in the trainer's sharding, values unchanged.
  bundle = types.SimpleNamespace(config=config, params=trained)
  ckpt_lib.restore_policy(bundle, workdir, 3, {"lora_rank": 0}, mesh)
  jax.tree.map(lambda got, want, sh: (np.testing.assert_array_equal(got, want),
                                      _assert_sharding(got, sh)),
               bundle.params, trained, fns.policy_shardings)
  assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(bundle.params))
  meshed = root / "eval_config_mesh.py"
  meshed.write_text(open(cfg, encoding="utf-8").read().replace(
      "  return c", "  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=4, tensor=2))\n"
      "  return c"))
  restored_on = []
  real_restore = ckpt_lib.restore_policy
  monkeypatch.setattr(ckpt_lib, "restore_policy", lambda *a: (
      restored_on.append(a[4]), real_restore(*a))[1])
  _run([f"--config={meshed}", f"--workdir={workdir}", "--name=meshed"])
  _run([f"--config={cfg}", f"--workdir={workdir}", "--name=one_device"])
  assert dict(restored_on[0].shape) == {"data": 1, "fsdp": 4, "tensor": 2}
  assert restored_on[1] is None  # no mesh section: the default device, as before
  results = {n: json.load(open(os.path.join(workdir, "eval", f"{n}.json"), encoding="utf-8"))
             for n in ("meshed", "one_device")}
  responses = {n: [x["response"] for x in r["datasets"]["mgsm"]["records"]]
               for n, r in results.items()}
  assert results["meshed"]["model"]["checkpoint_step"] == 3
  assert responses["meshed"] == responses["one_device"]


def test_compare_rejects_bad_input(tmp_path):
  bad = tmp_path / "x.json"
  bad.write_text('{"per_language": {}}')
  with pytest.raises(ValueError, match="not a pbrl-eval result"):
    _run([f"--workdir={tmp_path}", f"--compare={bad},{bad}"])


def test_report_of_two_known_results(tmp_path):
  from pbrl_jax import evaluate as ev
  from pbrl_jax.data.records import Example
  examples = [Example(f"q{i}", lang, "q", "1") for lang in ("en", "de") for i in range(4)]
  before_texts = ["#### 1", "#### 1", "#### 1", "#### 2", "#### 2", "#### 2", "#### 2", "#### 1"]
  after_texts = ["#### 1", "#### 1", "#### 1", "#### 2", "#### 1", "#### 1", "#### 2", "#### 1"]

  def result(texts):
    recs = ev.score_examples(examples, ["p"] * 8, [[t] for t in texts], [[3]] * 8,
                             [[False]] * 8)
    return {"model": {"source": "m"}, "created": "now",
            "datasets": {"toy": {**ev.summarize(recs, ("de",), n_boot=50), "records": recs,
                                 "settings": {"n_boot": 50, "seed": 0}}}}

  path = eval_main.write_report(str(tmp_path), "cmp", [("before", result(before_texts)),
                                                       ("after", result(after_texts))])
  md = open(path, encoding="utf-8").read()
  assert "| before | 8 | 0.750 | 0.250 | 0.500 |" in md
  assert "| after | 8 | 0.750 | 0.750 | 0.000 |" in md
  de_row = next(l for l in md.splitlines() if l.startswith("| de | yes |"))
  assert "+0.500 [" in de_row and "(n=4)" in de_row  # 2 of 4 German answers fixed
  en_row = next(l for l in md.splitlines() if l.startswith("| en |  |"))
  assert "+0.000 [+0.000, +0.000] (n=4)" in en_row
  for png in ("cmp_toy_accuracy.png", "cmp_toy_gap.png"):
    assert os.path.getsize(tmp_path / png) > 1000
