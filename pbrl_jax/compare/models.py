"""pbrl-compare, models: the tiny random one for --quick, and the default SmolLM2 directory."""

from __future__ import annotations

import json
import os
import tempfile


from pbrl_jax.fileio import atomic_write
from pbrl_jax.models.config import SUPPORTED_ARCHITECTURES




# ---------------------------------------------------------------------------------------------
# Models: the tiny random one for --quick, and the default SmolLM2 HF directory.
# ---------------------------------------------------------------------------------------------


def write_tiny_model(out_dir: str, seed: int = 0) -> str:
  """A tiny random transformers Llama with a byte-level tokenizer, saved as an HF directory.

  Byte-level BPE without merges: every UTF-8 byte is one token, so any prompt encodes, and
  the gold answers can be decoded. Ids 0, 1, 2 are <pad>, <s>, </s>.

  Args:
    out_dir: the directory to create (written into a temp directory, then renamed).
    seed: torch seed of the weights.

  Returns:
    out_dir.
  """
  import torch
  import transformers
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers

  if os.path.isfile(os.path.join(out_dir, "config.json")):
    return out_dir
  vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
  for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
    vocab[ch] = len(vocab)
  tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tk.decoder = decoders.ByteLevel()
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
  config = transformers.LlamaConfig(
      vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1,
      eos_token_id=2, pad_token_id=0)
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(config).to(torch.float32)
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tiny_model.tmp-", dir=parent)
  model.save_pretrained(tmp, safe_serialization=True)
  tokenizer.save_pretrained(tmp)
  try:
    os.rename(tmp, out_dir)
  except OSError:
    if not os.path.isfile(os.path.join(out_dir, "config.json")):
      raise
  return out_dir


def default_model_dir(cache_dir: str) -> str:
  """SmolLM2-135M-Instruct as an HF directory: our GGUF load exported once with `export_hf`
  (TRL cannot load a GGUF itself)."""
  from pbrl_jax.models import export_hf, from_pretrained, smollm2_gguf_path
  out = os.path.join(cache_dir, "smollm2_135m_instruct_hf_fp32")
  if not os.path.isfile(os.path.join(out, "config.json")):
    export_hf(from_pretrained(smollm2_gguf_path()), out, dtype="float32")
  return out


def trl_loadable_dir(model_dir: str, work_dir: str) -> str:
  """`model_dir`, or a view of it that TRL can load.

  TRL picks the model class from `architectures` in config.json; directories written without
  it (e.g. by transformers' own GGUF conversion) get a view in `work_dir`: symlinks to every
  file plus a config.json with the architecture of its `model_type` added.
  """
  with open(os.path.join(model_dir, "config.json")) as f:
    config = json.load(f)
  if config.get("architectures"):
    return model_dir
  arch = SUPPORTED_ARCHITECTURES.get(config.get("model_type"))
  if arch is None:
    raise ValueError(f"{model_dir}/config.json: no `architectures` and model_type "
                     f"{config.get('model_type')!r} is not one of "
                     f"{sorted(SUPPORTED_ARCHITECTURES)}")
  view = os.path.join(work_dir, "model_view")
  os.makedirs(view, exist_ok=True)
  for name in os.listdir(model_dir):
    src, dst = os.path.abspath(os.path.join(model_dir, name)), os.path.join(view, name)
    if name != "config.json" and not os.path.lexists(dst):
      os.symlink(src, dst)
  config["architectures"] = [arch]
  atomic_write(os.path.join(view, "config.json"), json.dumps(config, indent=2))
  return view
