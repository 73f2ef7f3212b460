"""Models: the Flax decoder family, value head, loading and export."""

from pbrl_jax.models.config import ConfigError, DecoderConfig, RopeScaling
from pbrl_jax.models.decoder import (Decoder, ValueHead, causal_mask, forward, init_cache,
                                     init_params, logits_fn, param_logical_axes, param_shapes,
                                     positions_from_mask, token_logprobs, unembed)
from pbrl_jax.models.hf import LoadError, export_hf
from pbrl_jax.models.bundle import ModelBundle, from_pretrained
from pbrl_jax.models.embedded import smollm2_gguf_path
