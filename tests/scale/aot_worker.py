"""Subprocess body of the full-size AOT tests: compile on N fake CPU devices, print JSON.

Run as `python tests/scale/aot_worker.py '<json PlanInputs fields>' N`, with the model as
"model_json" (a config.json path) or "model" (DecoderConfig fields); the device count must be
set before JAX is imported, hence a process of its own.
"""

import json
import os
import sys


def main() -> None:
  spec = json.loads(sys.argv[1])
  num_devices = int(sys.argv[2])
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  from pbrl_jax import plan  # pylint: disable=g-import-not-at-top
  from pbrl_jax.models.config import DecoderConfig  # pylint: disable=g-import-not-at-top

  if "model_json" in spec:
    with open(spec.pop("model_json")) as f:
      model = DecoderConfig.from_hf_dict(json.load(f))
  else:  # DecoderConfig fields inline.
    model = DecoderConfig(**spec.pop("model"))
  if "num_layers" in spec:
    model = model.replace(num_layers=spec.pop("num_layers"))
  steps = spec.pop("steps", ["update", "decode"])
  spec["mesh"] = tuple(spec["mesh"])
  inputs = plan.PlanInputs(model=model, **spec)
  result = plan.compare_with_xla(inputs, update="update" in steps, decode="decode" in steps)
  print("AOT_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
