"""A COMET-style answer-precision estimator: encoder features into a feed-forward regressor.

Features (Rei et al., COMET, 2020; reference-only variant), with h the hypothesis embedding,
r the reference embedding and optionally s the source embedding:

  x = [h; r; h * r; |h - r|]                     (4E)
  x = [h; r; h * r; |h - r|; h * s; |h - s|]     (6E, with a source)

then Linear -> act -> ... -> Linear -> optional final activation, a scalar per pair.

`load_comet_estimator` reads the estimator layers of an Unbabel COMET checkpoint, whose state
dict names them `estimator.ff.{i}.weight` [out, in] and `estimator.ff.{i}.bias` (Linear layers
at i = 0, 3, 6, ... with activation and dropout modules in between), from a `.safetensors`
file. COMET ships `.ckpt` pickles, which we never load: convert once with torch
(`safetensors.torch.save_file(torch.load(ckpt)["state_dict"], path)`) where pickles are
trusted. The features here come from *our* reward encoder, so a real COMET estimator (trained
on XLM-R-large layer-mixed features) only fits an encoder of its input width, and its scores
are not COMET's; the layout and the maths are.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False), "identity": lambda x: x,
}
_KEY_RE = re.compile(r"^(?:.*\.)?estimator\.ff\.(\d+)\.(weight|bias)$")


@dataclasses.dataclass(frozen=True)
class CometEstimator:
  """Feed-forward regressor weights ([in, out] kernels) and activations."""

  kernels: tuple[np.ndarray, ...]
  biases: tuple[np.ndarray, ...]
  activation: str = "tanh"
  final_activation: str = "identity"

  @property
  def in_dim(self) -> int:
    return int(self.kernels[0].shape[0])

  def params(self) -> dict[str, list[Array]]:
    return {"kernels": [jnp.asarray(k) for k in self.kernels],
            "biases": [jnp.asarray(b) for b in self.biases]}


def comet_features(h: Array, r: Array, s: Array | None = None) -> Array:
  """[B,E] embeddings -> [B,4E] (or [B,6E] with a source)."""
  parts = [h, r, h * r, jnp.abs(h - r)]
  if s is not None:
    parts += [h * s, jnp.abs(h - s)]
  return jnp.concatenate(parts, axis=-1)


def comet_score(params: dict[str, list[Array]], features: Array, activation: str = "tanh",
                final_activation: str = "identity") -> Array:
  """Pure, jittable: features [B,X] -> scores [B]."""
  act, final = ACTIVATIONS[activation], ACTIVATIONS[final_activation]
  x = features
  n = len(params["kernels"])
  for i, (w, b) in enumerate(zip(params["kernels"], params["biases"])):
    x = jnp.einsum("BX,XY->BY", x, w) + b
    x = act(x) if i < n - 1 else final(x)
  return x[:, 0]


def load_comet_estimator(path: str, activation: str = "tanh",
                         final_activation: str = "identity") -> CometEstimator:
  """Reads `estimator.ff.*` tensors of a COMET state dict saved as safetensors."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  for name, value in (("activation", activation), ("final_activation", final_activation)):
    if value not in ACTIVATIONS:
      raise ValueError(f"comet: {name} {value!r} is not one of {sorted(ACTIVATIONS)}")
  layers: dict[int, dict[str, np.ndarray]] = {}
  for key, tensor in load_file(path).items():
    m = _KEY_RE.match(key)
    if m:
      layers.setdefault(int(m.group(1)), {})[m.group(2)] = np.asarray(tensor, np.float32)
  if not layers:
    raise ValueError(f"{path}: no estimator.ff.<i>.weight tensors (not a COMET state dict)")
  kernels, biases = [], []
  for i in sorted(layers):
    layer = layers[i]
    if "weight" not in layer or "bias" not in layer:
      raise ValueError(f"{path}: estimator.ff.{i} lacks a weight or a bias")
    kernels.append(layer["weight"].T)  # torch Linear stores [out, in]
    biases.append(layer["bias"])
  for i in range(1, len(kernels)):
    if kernels[i].shape[0] != kernels[i - 1].shape[1]:
      raise ValueError(f"{path}: estimator layer {i} expects {kernels[i].shape[0]} inputs but"
                       f" layer {i - 1} gives {kernels[i - 1].shape[1]}")
  if kernels[-1].shape[1] != 1:
    raise ValueError(f"{path}: the last estimator layer has {kernels[-1].shape[1]} outputs,"
                     " expected 1")
  return CometEstimator(tuple(kernels), tuple(biases), activation, final_activation)


def estimator_scores(est: CometEstimator, h: np.ndarray, r: np.ndarray,
                     s: np.ndarray | None = None) -> np.ndarray:
  """Host convenience: scores [B] for embeddings h, r (and s) [B,E]; width is checked."""
  e = h.shape[-1]
  use_source = est.in_dim == 6 * e
  if est.in_dim not in (4 * e, 6 * e) or (use_source and s is None):
    raise ValueError(f"comet: estimator expects {est.in_dim} features; encoder dim {e} gives"
                     f" {4 * e} (reference only) or {6 * e} (with a source)")
  x = comet_features(jnp.asarray(h), jnp.asarray(r),
                     jnp.asarray(s) if use_source else None)
  return np.asarray(comet_score(est.params(), x, est.activation, est.final_activation))
