"""Writes small GGUF files the way llama.cpp's converter does (q/k rows permuted)."""

import gguf
import numpy as np


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp convert_hf_to_gguf LlamaModel.permute (HF rotate-half -> interleaved)."""
  return (w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def write_tiny_llama_gguf(model, path: str, *, arch: str = "llama",
                          drop: str | None = None, wrong_shape: str | None = None) -> None:
  """Writes an HF LlamaForCausalLM as an F32 GGUF with a toy byte-level vocabulary.

  Args:
    model: the torch model.
    path: output file.
    arch: general.architecture to write.
    drop: a GGUF tensor name to leave out.
    wrong_shape: a GGUF tensor name to write with one row too few.
  """
  c = model.config
  w = gguf.GGUFWriter(path, arch)
  w.add_block_count(c.num_hidden_layers)
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_rope_freq_base(10000.0)
  w.add_vocab_size(c.vocab_size)
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("gpt2")
  alphabet = [chr(i) for i in range(ord("!"), ord("~") + 1)] + [chr(i) for i in range(0xA1, 0x17F)]
  tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + alphabet[:c.vocab_size - 3]
  w.add_token_list(tokens)
  w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
  w.add_token_merges([])
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_pad_token_id(0)
  sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
  names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
  if not c.tie_word_embeddings:
    names["lm_head.weight"] = "output.weight"
  for i in range(c.num_hidden_layers):
    p = f"model.layers.{i}."
    names.update({
        p + "input_layernorm.weight": f"blk.{i}.attn_norm.weight",
        p + "post_attention_layernorm.weight": f"blk.{i}.ffn_norm.weight",
        p + "self_attn.q_proj.weight": f"blk.{i}.attn_q.weight",
        p + "self_attn.k_proj.weight": f"blk.{i}.attn_k.weight",
        p + "self_attn.v_proj.weight": f"blk.{i}.attn_v.weight",
        p + "self_attn.o_proj.weight": f"blk.{i}.attn_output.weight",
        p + "mlp.gate_proj.weight": f"blk.{i}.ffn_gate.weight",
        p + "mlp.up_proj.weight": f"blk.{i}.ffn_up.weight",
        p + "mlp.down_proj.weight": f"blk.{i}.ffn_down.weight",
    })
  for hf_name, g_name in names.items():
    a = sd[hf_name]
    if g_name.endswith("attn_q.weight"):
      a = permute_qk(a, c.num_attention_heads)
    elif g_name.endswith("attn_k.weight"):
      a = permute_qk(a, c.num_key_value_heads)
    if g_name == drop:
      continue
    if g_name == wrong_shape:
      a = a[:-1]
    w.add_tensor(g_name, np.ascontiguousarray(a, np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
