"""Bad checkpoints fail with LoadError naming the file and the tensor or field."""

import json
import os
import shutil
import struct

import numpy as np
import pytest
import safetensors.numpy

from gguf_fixtures import write_tiny_llama_gguf
from pbrl_jax.models import LoadError, from_pretrained, smollm2_gguf_path
from reference_models import rel_err, tiny_hf_model, torch_logits


@pytest.fixture
def tiny_dir(tmp_path):
  _, path = tiny_hf_model("llama", tmp_path)
  return path


def _edit_config(path, fn):
  cfg_path = os.path.join(path, "config.json")
  with open(cfg_path) as f:
    cfg = json.load(f)
  fn(cfg)
  with open(cfg_path, "w") as f:
    json.dump(cfg, f)
  return cfg_path


def test_missing_config_field(tiny_dir):
  cfg_path = _edit_config(tiny_dir, lambda c: c.pop("intermediate_size"))
  with pytest.raises(LoadError, match="intermediate_size") as e:
    from_pretrained(tiny_dir)
  assert cfg_path in str(e.value)


def test_unsupported_architecture(tiny_dir):
  cfg_path = _edit_config(tiny_dir, lambda c: c.update(model_type="gpt2",
                                                       architectures=["GPT2LMHeadModel"]))
  with pytest.raises(LoadError, match="'gpt2'") as e:
    from_pretrained(tiny_dir)
  assert cfg_path in str(e.value) and "model_type" in str(e.value)


def _tensor_ends(path):
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
  header.pop("__metadata__", None)
  return {k: 8 + n + v["data_offsets"][1] for k, v in header.items()}, 8 + n


def test_truncated_safetensors(tiny_dir):
  st = os.path.join(tiny_dir, "model.safetensors")
  ends, _ = _tensor_ends(st)
  size = os.path.getsize(st) - 1000
  with open(st, "r+b") as f:
    f.truncate(size)
  with pytest.raises(LoadError, match="truncated") as e:
    from_pretrained(tiny_dir)
  msg = str(e.value)
  assert st in msg
  cut = [k for k, end in ends.items() if end > size]
  assert any(f"'{k}'" in msg for k in cut), msg


def test_corrupt_safetensors_header(tiny_dir):
  st = os.path.join(tiny_dir, "model.safetensors")
  with open(st, "r+b") as f:
    f.seek(8)
    f.write(b"\xff\x00garbage")
  with pytest.raises(LoadError, match="safetensors header") as e:
    from_pretrained(tiny_dir)
  assert st in str(e.value)


def test_wrong_shape_and_missing_tensor(tiny_dir):
  st = os.path.join(tiny_dir, "model.safetensors")
  tensors = safetensors.numpy.load_file(st)
  bad = dict(tensors)
  bad["model.layers.1.mlp.up_proj.weight"] = bad["model.layers.1.mlp.up_proj.weight"][:, :-1]
  safetensors.numpy.save_file(bad, st, metadata={"format": "pt"})
  with pytest.raises(LoadError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' has shape") as e:
    from_pretrained(tiny_dir)
  assert st in str(e.value)
  missing = {k: v for k, v in tensors.items() if k != "model.layers.2.self_attn.k_proj.weight"}
  safetensors.numpy.save_file(missing, st, metadata={"format": "pt"})
  with pytest.raises(LoadError, match=r"missing tensor 'model\.layers\.2\.self_attn\.k_proj") as e:
    from_pretrained(tiny_dir)
  assert st in str(e.value)


def test_missing_shard_in_index(tmp_path):
  model, _ = tiny_hf_model("qwen2", tmp_path)
  path = str(tmp_path / "sharded")
  model.save_pretrained(path, max_shard_size="40KB")
  victim = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))[1]
  os.remove(os.path.join(path, victim))
  with pytest.raises(LoadError, match=victim) as e:
    from_pretrained(path)
  assert "model.safetensors.index.json" in str(e.value)


def test_tiny_gguf_loads_with_unpermuted_qk(tmp_path):
  """A llama.cpp-style F32 GGUF (q/k rows permuted) gives transformers' logits."""
  model, _ = tiny_hf_model("llama", tmp_path)
  # GGUF metadata carries no llama3 rope scaling: compare against the same weights without it.
  import transformers
  plain = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      **{k: v for k, v in model.config.to_dict().items()
         if k not in ("rope_scaling", "rope_parameters", "rope_theta")}, rope_theta=10000.0))
  plain.load_state_dict(model.state_dict())
  plain.eval()
  path = str(tmp_path / "tiny.gguf")
  write_tiny_llama_gguf(plain, path)
  bundle = from_pretrained(path)
  assert bundle.config.rope_theta == 10000.0 and not bundle.config.tie_word_embeddings
  ids = np.random.default_rng(0).integers(3, 200, (2, 11))
  assert rel_err(bundle.logits(ids), torch_logits(plain, ids)) <= 1e-4


@pytest.mark.parametrize("kind", ["missing", "shape", "arch"])
def test_bad_gguf_tensors_and_arch(tmp_path, kind):
  model, _ = tiny_hf_model("llama", tmp_path)
  path = str(tmp_path / f"{kind}.gguf")
  if kind == "missing":
    write_tiny_llama_gguf(model, path, drop="blk.1.ffn_up.weight")
    pattern = r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"
  elif kind == "shape":
    write_tiny_llama_gguf(model, path, wrong_shape="blk.2.attn_v.weight")
    pattern = r"'model\.layers\.2\.self_attn\.v_proj\.weight' has shape"
  else:
    write_tiny_llama_gguf(model, path, arch="gpt2")
    pattern = r"general\.architecture 'gpt2' is not supported"
  with pytest.raises(LoadError, match=pattern) as e:
    from_pretrained(path)
  assert path in str(e.value)


@pytest.mark.parametrize("keep,pattern", [
    (60_000_000, r"tensor 'blk\.\d+\.[a-z_]+\.weight': truncated file"),
    (3_000, r"truncated or corrupt GGUF header while reading metadata 'tokenizer"),
])
def test_truncated_gguf(tmp_path, keep, pattern):
  path = str(tmp_path / "cut.gguf")
  with open(smollm2_gguf_path(), "rb") as src, open(path, "wb") as dst:
    dst.write(src.read(keep))
  with pytest.raises(LoadError, match=pattern) as e:
    from_pretrained(path)
  assert path in str(e.value)


def test_not_a_gguf(tmp_path):
  path = str(tmp_path / "bad.gguf")
  shutil.copy(smollm2_gguf_path(), path)
  with open(path, "r+b") as f:
    f.write(b"GGUX")
  with pytest.raises(LoadError, match="not a GGUF file") as e:
    from_pretrained(path)
  assert path in str(e.value)
  with pytest.raises(LoadError, match="no such model"):
    from_pretrained(str(tmp_path / "nowhere"))
