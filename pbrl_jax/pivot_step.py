"""The pivot step: English references for a config's questions, embedded once, stored.

`build` is what `pbrl-pivot` runs and what the demo and tests call: it answers the questions
with the pivot model (or imports a references JSONL, or the gsm_symbolic oracle solutions),
embeds the references with every configured encoder and writes DIR/pivot/
(`pbrl_jax.data.pivot`).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
from absl import logging

from pbrl_jax import fileio


def resolve_encoders(specs: Any) -> dict[str, Callable[[list[str]], np.ndarray]]:
  """Encoder spec -> host function texts -> [B,E] float32, via pbrl_jax.rewards."""
  from pbrl_jax.rewards import encoders as enc_lib  # pylint: disable=g-import-not-at-top
  out = {}
  for spec in specs:
    enc = enc_lib.load_encoder(spec)
    out[spec] = lambda texts, enc=enc: np.asarray(enc.encode(texts), np.float32)
  return out


def pivot_responder(pivot: Any) -> tuple[Callable[[list[str]], list[str]], str]:
  """(questions -> responses through our sampler, model description)."""
  from pbrl_jax import models  # pylint: disable=g-import-not-at-top
  from pbrl_jax import sampling  # pylint: disable=g-import-not-at-top
  path = pivot.model
  if not path:
    from pbrl_jax.models import embedded  # pylint: disable=g-import-not-at-top
    path = embedded.smollm2_gguf_path()
  bundle = models.from_pretrained(path)

  def respond(questions: list[str]) -> list[str]:
    prompts = [pivot.prompt_template.format(question=q) for q in questions]
    return sampling.generate_text(bundle, prompts, max_new_tokens=pivot.max_new_tokens,
                                  temperature=pivot.temperature, seed=0)

  return respond, path


def build(config: Any, workdir: str, references: str | None = None, oracle: bool = False,
          process_index: int = 0, process_count: int = 1,
          encoders: dict[str, Callable[[list[str]], np.ndarray]] | None = None
          ) -> dict[str, Any] | None:
  """The CLI's work, callable from Python and tests.

  Args:
    config: Config with `data` and `pivot` sections.
    workdir: Run directory.
    references: A references JSONL to import, or None.
    oracle: Write and import the gsm_symbolic oracle references.
    process_index: This host.
    process_count: Number of hosts.
    encoders: Injected encoder functions (default: `config.pivot.encoders` via pbrl_jax.rewards).

  Returns:
    The manifest on process 0, else None.
  """
  # pylint: disable-next=g-import-not-at-top
  from pbrl_jax.data import gsm_symbolic, pivot as pivot_lib, sources
  from pbrl_jax.data.records import DataError, ErrorCounter  # pylint: disable=g-import-not-at-top
  from pbrl_jax.data.spec import DataSection, PivotSection  # pylint: disable=g-import-not-at-top
  data = DataSection.from_config(config.data)
  pivot = PivotSection.from_config(config.pivot)
  fileio.makedirs(workdir)
  source = sources.load_source(data, workdir)
  questions = {it.id: it for it in source.pivot}
  respond = None
  info: dict[str, Any] = {"source": source.description, "source_sha256": source.sha256,
                          "prompt_template": pivot.prompt_template}
  if oracle:
    if data.source != "gsm_symbolic":
      raise DataError("--oracle needs data.source='gsm_symbolic'")
    references = os.path.join(workdir, "oracle_references.jsonl")
    gsm_symbolic.write_oracle_references(source.oracle, references)
  if references:
    imported = pivot_lib.read_references_jsonl(references,
                                               errors=ErrorCounter(pivot.on_error))
    items = []
    for it in imported:
      q = questions.get(it.id)
      gold = it.gold if it.gold is not None else (q.gold if q else None)
      items.append(pivot_lib.PivotItem(it.id, it.question, it.response, gold))
    unknown = [it.id for it in imported if it.id not in questions]
    if unknown:
      logging.warning("%d imported references have ids outside the source (first: %s)",
                      len(unknown), unknown[:3])
    info.update({"pivot_model": "oracle" if oracle else "imported",
                 # The name and content hash, not the location: moving the file is no change.
                 "references_file": os.path.basename(references),
                 "references_sha256": pivot_lib.file_sha256(references),
                 "prompt_template": None})
  else:
    respond, model = pivot_responder(pivot)
    items = list(source.pivot)
    info.update({"pivot_model": model, "max_new_tokens": pivot.max_new_tokens,
                 "temperature": pivot.temperature})
  if encoders is None:
    encoders = resolve_encoders(pivot.encoders)
  manifest = pivot_lib.build_references(
      items, pivot_lib.reference_dir(workdir), encoders=encoders, info=info, respond=respond,
      batch_size=pivot.batch_size, filter_correct=pivot.filter_correct,
      shard_size=pivot.shard_size, embed_fields=pivot.embed_fields,
      process_index=process_index, process_count=process_count,
      wait_for_hosts_s=pivot.wait_for_hosts_s)
  if manifest is not None:
    logging.info("pivot references: %s questions, %s kept; filter %s; written to %s",
                 manifest["counts"]["questions"], manifest["counts"]["references"],
                 manifest["filter"], pivot_lib.reference_dir(workdir))
  return manifest
