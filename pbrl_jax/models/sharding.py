"""The one sharding vocabulary: a ('data', 'fsdp', 'tensor') mesh and logical axis rules.

Every parameter and the main activations carry logical axis names (see `decoder.py`); the
rules here map them to mesh axes. Batches are split over ('data', 'fsdp'); weights are split
over 'fsdp' along the model dimension and over 'tensor' along heads / ffw / vocab.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (logical name, mesh axis or tuple of mesh axes or None).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("lora_rank", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with axes ('data', 'fsdp', 'tensor'); -1 in `data` takes the remaining devices.

  Axis types are Auto so classic sharding propagation applies inside jit (JAX 0.10
  defaults `jax.make_mesh` to Explicit).
  """
  devices = list(devices if devices is not None else jax.devices())
  if data == -1:
    if len(devices) % (fsdp * tensor):
      raise ValueError(f"mesh: {len(devices)} devices are not divisible by fsdp*tensor ="
                       f" {fsdp * tensor}")
    data = len(devices) // (fsdp * tensor)
  if data * fsdp * tensor != len(devices):
    raise ValueError(f"mesh: data*fsdp*tensor = {data * fsdp * tensor} but"
                     f" {len(devices)} devices are available")
  return jax.make_mesh((data, fsdp, tensor), MESH_AXES, devices=devices,
                       axis_types=(AxisType.Auto,) * 3)


def mesh_from_config(mesh_cfg: Any) -> Mesh:
  """The mesh of a `config.mesh` section (anything with data, fsdp and tensor).

  The error names the section and the device count, for the trainer and pbrl-eval alike.
  """
  try:
    return make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor)
  except ValueError as e:
    raise ValueError(f"config.mesh: data={mesh_cfg.data} fsdp={mesh_cfg.fsdp} tensor="
                     f"{mesh_cfg.tensor} does not fit the {jax.device_count()} devices:"
                     f" {e}") from e


def _mesh_axes_size(mesh: Mesh, axes: Any) -> int:
  if axes is None:
    return 1
  if isinstance(axes, str):
    axes = (axes,)
  return int(np.prod([mesh.shape[a] for a in axes]))


def logical_to_mesh_spec(logical: P, shape: Sequence[int], mesh: Mesh,
                         rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> P:
  """Maps one logical PartitionSpec to a mesh PartitionSpec.

  A dimension whose size the mesh axes do not divide is replicated instead (small models
  with 3 kv heads on a 2-way tensor axis), and no mesh axis is used twice.
  """
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name, size in zip(tuple(logical) + (None,) * (len(shape) - len(logical)), shape):
    axes = table.get(name) if name is not None else None
    flat = (axes,) if isinstance(axes, str) else tuple(axes or ())
    if not flat or used.intersection(flat) or size % _mesh_axes_size(mesh, flat):
      out.append(None)
      continue
    used.update(flat)
    out.append(axes)
  return P(*out)


def param_shardings(logical_specs: Any, shapes: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
  """Tree of NamedSharding for a params tree, from its logical specs and shapes."""
  return jax.tree.map(
      lambda spec, s: NamedSharding(mesh, logical_to_mesh_spec(spec, s.shape, mesh, rules)),
      logical_specs, shapes, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) axis split over ('data', 'fsdp'); the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def axis_rules(rules: Sequence[tuple[str, Any]] = DEFAULT_RULES):
  """Context manager that makes `nn.with_logical_constraint` use these rules."""
  return nn.logical_axis_rules(rules)
