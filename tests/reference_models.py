"""Shared, cached reference models for parity tests (transformers/PyTorch side).

Used by the model, sampler and PyTorch-comparison tests:
  smollm2_gguf_path()       the embedded SmolLM2-135M-Instruct Q4_1 GGUF.
  hf_smollm2_dir()          an HF directory (fp32 safetensors + tokenizer) of transformers'
                            own dequantisation of that GGUF, cached under <repo>/.cache/.
  hf_smollm2_torch_model()  transformers' LlamaForCausalLM of the same (one per process).
  hf_smollm2_tokenizer()    transformers' tokenizer built from the GGUF.
  tiny_hf_model(family, d)  a random tiny transformers model saved as an HF directory.

Loading a GGUF in transformers dequantises every tensor to fp32 in Python and takes
minutes; the first process writes the result as an ordinary HF directory (atomically: a temp
directory renamed into place), later processes load that in seconds.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from typing import Any

from pbrl_jax.models.embedded import smollm2_gguf_path

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.path.join(REPO_ROOT, ".cache")
# Bump when the way the cached directory is produced changes.
_SMOLLM2_CACHE_NAME = "hf_smollm2_135m_instruct_from_gguf_v1"

TINY_FAMILIES = ("llama", "llama_tied", "qwen2", "qwen2_tied", "qwen3", "qwen3_tied")


def _gguf_dir_and_file() -> tuple[str, str]:
  path = smollm2_gguf_path()
  return os.path.dirname(path), os.path.basename(path)


@functools.lru_cache(maxsize=None)
def hf_smollm2_tokenizer() -> Any:
  """transformers' own tokenizer for the embedded GGUF (built from its metadata)."""
  from transformers import AutoTokenizer
  d, f = _gguf_dir_and_file()
  return AutoTokenizer.from_pretrained(d, gguf_file=f)


def hf_smollm2_dir() -> str:
  """HF directory of SmolLM2-135M-Instruct as transformers dequantises the GGUF (cached)."""
  out = os.path.join(CACHE_DIR, _SMOLLM2_CACHE_NAME)
  if os.path.isfile(os.path.join(out, "config.json")):
    return out
  import torch
  from transformers import AutoModelForCausalLM
  d, f = _gguf_dir_and_file()
  model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
  model.eval()
  tokenizer = hf_smollm2_tokenizer()
  os.makedirs(CACHE_DIR, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=_SMOLLM2_CACHE_NAME + ".tmp", dir=CACHE_DIR)
  try:
    # save_pretrained refuses a GGUF-quantised model; the weights are plain fp32 tensors by
    # now, so write them and a config without the quantisation entry ourselves.
    import safetensors.torch
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["torch_dtype"] = config["dtype"] = "float32"
    tied = bool(config.get("tie_word_embeddings"))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    safetensors.torch.save_file(state, os.path.join(tmp, "model.safetensors"),
                                metadata={"format": "pt"})
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(config, f, indent=2)
    tokenizer.save_pretrained(tmp)
    try:
      os.rename(tmp, out)
    except OSError:
      # Another process finished first; its copy is equivalent.
      if not os.path.isfile(os.path.join(out, "config.json")):
        raise
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return out


@functools.lru_cache(maxsize=None)
def hf_smollm2_torch_model() -> Any:
  """transformers' fp32 LlamaForCausalLM of the embedded GGUF, loaded once per process."""
  import torch
  from transformers import AutoModelForCausalLM
  model = AutoModelForCausalLM.from_pretrained(hf_smollm2_dir(), dtype=torch.float32)
  return model.eval()


def _tiny_config(family: str) -> Any:
  import transformers
  tied = family.endswith("_tied")
  base = family.removesuffix("_tied")
  common = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-5, tie_word_embeddings=tied, bos_token_id=1,
                eos_token_id=2, pad_token_id=0)
  if base == "llama":
    return transformers.LlamaConfig(
        **common, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
  if base == "qwen2":
    return transformers.Qwen2Config(**common, rope_theta=1000000.0)
  if base == "qwen3":
    # head_dim (24) != hidden / heads (16).
    return transformers.Qwen3Config(**common, head_dim=24, rope_theta=1000000.0)
  raise ValueError(f"unknown tiny family {family!r}; one of {TINY_FAMILIES}")


def tiny_hf_model(family: str, tmp_path: Any, seed: int = 0) -> tuple[Any, str]:
  """A random-initialised tiny transformers model, saved as an HF directory.

  Args:
    family: one of TINY_FAMILIES: llama (llama3 rope scaling), qwen2 (q/k/v biases),
      qwen3 (q/k norm, head_dim != hidden/heads), each optionally `_tied`.
    tmp_path: directory to write into (a subdirectory named after the family is made).
    seed: torch seed of the random weights.

  Returns:
    (torch model in eval mode, float32; the directory path).
  """
  import torch
  import transformers
  config = _tiny_config(family)
  torch.manual_seed(seed)
  cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM,
         "qwen3": transformers.Qwen3ForCausalLM}[family.removesuffix("_tied")]
  model = cls(config).to(torch.float32).eval()
  with torch.no_grad():
    # Random non-trivial norm weights and biases, so a mapping mistake cannot hide.
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      elif name.endswith(".bias"):
        p.copy_(0.1 * torch.randn_like(p))
  out = os.path.join(str(tmp_path), family)
  model.save_pretrained(out, safe_serialization=True)
  return model, out


def rel_err(ours: Any, ref: Any) -> float:
  """Relative error used by every parity test: max|ours - ref| / max|ref|."""
  import numpy as np
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def torch_logits(model: Any, ids: Any, valid: Any = None) -> Any:
  """transformers logits [B,T,V] as float32 numpy; positions count real tokens only.

  Positions are passed explicitly (cumsum of the mask - 1), the convention of our
  `positions_from_mask`, so left-padded rows match an unpadded run.
  """
  import numpy as np
  import torch
  ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.long)
  if valid is None:
    valid = np.ones(tuple(ids_t.shape), np.int64)
  mask = torch.as_tensor(np.asarray(valid), dtype=torch.long)
  positions = torch.clamp(torch.cumsum(mask, -1) - 1, min=0)
  with torch.no_grad():
    out = model(input_ids=ids_t, attention_mask=mask, position_ids=positions)
  return out.logits.float().numpy()
