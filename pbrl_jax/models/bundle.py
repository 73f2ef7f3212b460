"""ModelBundle: a loaded policy (config, params, tokenizer) and `from_pretrained`."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from pbrl_jax.models import decoder, sharding
from pbrl_jax.models.config import DecoderConfig
from pbrl_jax.models.gguf_loader import GGUFFile, gguf_config, load_gguf_params
from pbrl_jax.models.hf import LoadError, load_hf_params, read_hf_config
from pbrl_jax.models.tokenizer import load_hf_tokenizer, tokenizer_from_gguf_metadata


@functools.partial(jax.jit, static_argnums=1)
def _logits(params: Any, config: DecoderConfig, tokens: jax.Array, valid: jax.Array
            ) -> jax.Array:
  return decoder.logits_fn(params, config, tokens, valid)


@dataclasses.dataclass
class ModelBundle:
  """A decoder with everything needed to run it on text.

  Attributes:
    config: the architecture and dtypes.
    params: the parameter pytree (possibly sharded).
    tokenizer: a transformers fast tokenizer (with `chat_template`), or None.
  """

  config: DecoderConfig
  params: Any
  tokenizer: Any = None

  @property
  def chat_template(self) -> str | None:
    return getattr(self.tokenizer, "chat_template", None)

  def logits(self, token_ids: Any, valid: Any | None = None) -> jax.Array:
    """float32 logits [B,T,V] for int token ids [B,T] (valid: [B,T] 1/0 for left padding)."""
    tokens = jnp.asarray(np.asarray(token_ids, np.int32))
    if tokens.ndim == 1:
      tokens = tokens[None]
    valid = jnp.ones(tokens.shape, jnp.int32) if valid is None else jnp.asarray(
        np.asarray(valid, np.int32)).reshape(tokens.shape)
    return _logits(self.params, self.config, tokens, valid)



def from_pretrained(path: str, dtype: str = "float32", param_dtype: str | None = None,
                    mesh: Mesh | None = None,
                    rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES) -> ModelBundle:
  """Loads an HF directory (config.json + safetensors) or a `.gguf` file.

  Args:
    path: the directory or file.
    dtype: compute dtype.
    param_dtype: stored parameter dtype (defaults to `dtype`).
    mesh: with a mesh, each weight is placed straight into its NamedSharding.
    rules: logical axis rules for the mesh.

  Returns:
    The bundle; nothing is returned half-loaded.

  Raises:
    LoadError: naming the file and the field or tensor at fault.
  """
  param_dtype = param_dtype or dtype
  if os.path.isdir(path):
    config = read_hf_config(path, param_dtype=param_dtype, dtype=dtype)
    params = load_hf_params(path, config, mesh=mesh, rules=rules)
    return ModelBundle(config, params, load_hf_tokenizer(path))
  if os.path.isfile(path):
    f = GGUFFile(path)
    config = gguf_config(f, param_dtype=param_dtype, dtype=dtype)
    # The tokenizer builds on a thread while numpy dequantises (which releases the GIL).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      tokenizer = pool.submit(tokenizer_from_gguf_metadata, f.metadata, path)
      params = load_gguf_params(f, config, mesh=mesh, rules=rules)
      return ModelBundle(config, params, tokenizer.result())
  raise LoadError(f"{path}: no such model directory or GGUF file")


def resolve_path(path: str) -> str:
  """A model path with the `embedded:smollm2` shorthand resolved to the packaged GGUF file."""
  from pbrl_jax.models import embedded  # pylint: disable=g-import-not-at-top
  return embedded.smollm2_gguf_path() if path == "embedded:smollm2" else path


def config_and_tokenizer(path: str) -> tuple[DecoderConfig, Any]:
  """Architecture and tokenizer of a model directory or GGUF file, without its weights."""
  if os.path.isdir(path):
    return read_hf_config(path), load_hf_tokenizer(path)
  f = GGUFFile(path)
  return gguf_config(f), tokenizer_from_gguf_metadata(f.metadata, path)


def load_policy(model: Any, seed: int, mesh: Mesh | None = None
                ) -> tuple[DecoderConfig, Any, Any]:
  """(config, params, tokenizer) of the policy a config's `model` section names.

  `model.random_init` gives the architecture of `model.path` with fresh weights drawn from
  `seed` (test configs); otherwise the weights are loaded. `model.overrides` replaces config
  fields (e.g. fewer layers) either way. With `mesh`, every weight is created or read straight
  into its NamedSharding (`sharding.DEFAULT_RULES`, as the trainer's state): no host holds the
  whole model; without, the params sit on the default device.
  """
  path = resolve_path(model.path)
  if model.random_init:
    cfg, tokenizer = config_and_tokenizer(path)
    cfg = run_config(cfg, model)
    out_sh = None if mesh is None else sharding.param_shardings(
        decoder.param_logical_axes(cfg), decoder.param_shapes(cfg), mesh)
    init = jax.jit(decoder.init_params, static_argnums=0, out_shardings=out_sh)
    return cfg, init(cfg, jax.random.PRNGKey(seed)), tokenizer
  bundle = from_pretrained(path, dtype=model.dtype, param_dtype=model.param_dtype, mesh=mesh)
  return run_config(bundle.config, model), bundle.params, bundle.tokenizer


def run_config(cfg: DecoderConfig, model: Any) -> DecoderConfig:
  """The architecture a run trains: `cfg` (a checkpoint's) with the config's `model` section
  applied (dtypes, remat, vocabulary block, then `overrides`). `pbrl-plan --check-xla`
  compiles the trainer's steps for exactly this."""
  return cfg.replace(dtype=model.dtype, param_dtype=model.param_dtype, remat=model.remat,
                     vocab_block=model.vocab_block, **model.overrides)
