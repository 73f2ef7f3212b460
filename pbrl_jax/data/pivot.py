"""Pivot references: build, store (ArrayRecord shards + manifest.json), verify and load.

A reference is the English pivot's answer to one question, by id: the response, its split into
reasoning and final answer, the gold answer when known, and the reference-side embeddings for
each configured reward encoder (computed once here, never in the training loop).

On disk (directory `workdir/pivot/`):
  refs-00000-of-00004.arrayrecord        one JSON object per record (see `encode_reference`)
  refs-00000-of-00004.arrayrecord.done   JSON: plan fingerprint, sha256, record count, stats
  manifest.json                          written last; lists every shard with its sha256

Crash safety: a shard is written to a temporary name, fsynced and renamed (in a bucket: written
locally, then uploaded as one object, which appears whole or not at all); then its `.done`
marker is written atomically. A shard counts as finished only when its marker exists, names
the current plan fingerprint, and the file's sha256 matches. A killed run therefore leaves
either finished shards (kept on the next run) or files that do not verify (rebuilt); the
manifest exists only when every shard is finished.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from absl import logging

from pbrl_jax import fileio
from pbrl_jax.data.readers import read_jsonl_objects
from pbrl_jax.data.records import DataError, ErrorCounter, where
from pbrl_jax.fileio import atomic_write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUBDIR = "pivot"
# The reward's segments (`rewards.score.SEGMENTS` full, reasoning, answer) under the
# reference's field names.
EMBED_FIELDS = ("response", "reasoning", "answer")
# Test hook: seconds to sleep after a shard's temporary file is written and before it is
# renamed, so a fault test can SIGKILL the writer at the worst moment.
TEST_DELAY_ENV = "PBRL_TEST_PIVOT_SHARD_DELAY_S"
_SHARD_RE = re.compile(r"^refs-(\d{5})-of-(\d{5})\.arrayrecord$")

Encoder = Callable[[list[str]], np.ndarray]
Responder = Callable[[list[str]], list[str]]


def reference_dir(workdir: str) -> str:
  return os.path.join(workdir, SUBDIR)


@dataclasses.dataclass(frozen=True)
class PivotItem:
  """One English question to build a reference for; `response` is None when a model answers."""

  id: str
  question: str
  response: str | None = None
  gold: str | None = None


@dataclasses.dataclass(frozen=True)
class Reference:
  """One stored pivot reference. `embeddings` keys are '{encoder}/{field}', values [E] float32."""

  id: str
  question: str
  response: str
  reasoning: str
  answer: str | None
  gold: str | None
  embeddings: dict[str, np.ndarray]


def encode_reference(ref: Reference) -> bytes:
  """JSON bytes; each embedding is base64 of little-endian float32 with its shape."""
  emb = {}
  for k, v in sorted(ref.embeddings.items()):
    a = np.ascontiguousarray(v, dtype="<f4")
    emb[k] = {"shape": list(a.shape), "f32_b64": base64.b64encode(a.tobytes()).decode()}
  obj = {"id": ref.id, "question": ref.question, "response": ref.response,
         "reasoning": ref.reasoning, "answer": ref.answer, "gold": ref.gold, "embeddings": emb}
  return json.dumps(obj, ensure_ascii=False, sort_keys=True).encode()


def decode_reference(data: bytes) -> Reference:
  obj = json.loads(data.decode("utf-8"))
  emb = {}
  for k, v in obj["embeddings"].items():
    emb[k] = np.frombuffer(base64.b64decode(v["f32_b64"]), dtype="<f4").reshape(v["shape"])
  return Reference(obj["id"], obj["question"], obj["response"], obj["reasoning"],
                   obj["answer"], obj["gold"], emb)


def read_references_jsonl(path: str, on_error: str = "raise",
                          errors: ErrorCounter | None = None) -> list[PivotItem]:
  """Reads references made elsewhere: `id`, `question`, `response`, optional `answer` (gold)."""
  errors = errors or ErrorCounter(on_error)
  out, seen = [], {}
  for i, obj in read_jsonl_objects(path, errors):
    missing = [k for k in ("id", "question", "response") if k not in obj]
    if missing:
      errors(f"{where(path, i, missing[0])}: missing field", "missing_field")
      continue
    bad = [k for k in ("id", "question", "response") if not isinstance(obj[k], str)]
    if bad:
      errors(f"{where(path, i, bad[0])}: expected a string, got "
             f"{type(obj[bad[0]]).__name__}", "wrong_type")
      continue
    gold = obj.get("answer")
    if gold is not None and (not isinstance(gold, (str, int, float)) or isinstance(gold, bool)):
      errors(f"{where(path, i, 'answer')}: expected a string or number", "wrong_type")
      continue
    if obj["id"] in seen:
      errors(f"{where(path, i, 'id')}: duplicate id {obj['id']!r} (first on line "
             f"{seen[obj['id']]})", "duplicate_id")
      continue
    seen[obj["id"]] = i
    out.append(PivotItem(obj["id"], obj["question"], obj["response"],
                         None if gold is None else str(gold)))
  return out


def file_sha256(path: str) -> str:
  if fileio.is_url(path):
    return hashlib.sha256(fileio.read_bytes(path)).hexdigest()
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def items_sha256(items: Sequence[PivotItem]) -> str:
  """Content hash of the inputs, so a changed source never reuses old shards."""
  h = hashlib.sha256()
  for it in items:
    h.update(json.dumps(dataclasses.asdict(it), sort_keys=True, ensure_ascii=False).encode())
    h.update(b"\n")
  return h.hexdigest()


def _shard_name(i: int, n: int) -> str:
  return f"refs-{i:05d}-of-{n:05d}.arrayrecord"


def _default_answer_fns():
  from pbrl_jax.rewards import answers  # pylint: disable=g-import-not-at-top
  # References are English: their final answers are read as the reward reads them.
  extract = functools.partial(answers.extract_final_answer, lang="en")
  return answers.split_reasoning_answer, extract, answers.answers_match, answers.gold_answer


def _read_shard(path: str, sha256: str | None = None) -> list[bytes]:
  """The shard's records; with `sha256`, after checking the bytes read against it (one
  download of a shard in a bucket serves both)."""
  # pylint: disable-next=g-import-not-at-top
  from array_record.python.array_record_module import ArrayRecordReader
  with fileio.local_copy(path) as local:  # ArrayRecord reads local files only
    if sha256 is not None and file_sha256(local) != sha256:
      raise DataError(f"{path}: sha256 differs from {MANIFEST}; the shard changed after it was "
                      "written")
    reader = ArrayRecordReader(local)
    try:
      return list(reader.read_all())
    finally:
      reader.close()


def _write_shard(path: str, records: Sequence[bytes]) -> str:
  """Writes records to `path` through a temporary name; the rename (or upload) is the commit.

  Returns the sha256 of the bytes written (hashed before the commit: a bucket's shard is not
  downloaded again to hash it).
  """
  # pylint: disable-next=g-import-not-at-top
  from array_record.python.array_record_module import ArrayRecordWriter
  # ArrayRecord writes local files only: a shard bound for a bucket is staged locally.
  tmp = os.path.join(fileio.local_staging_dir(path),
                     f"{os.path.basename(path)}.tmp-{os.getpid()}")
  writer = ArrayRecordWriter(tmp, "group_size:1")
  for r in records:
    writer.write(r)
  writer.close()
  with open(tmp, "rb") as f:
    os.fsync(f.fileno())
  digest = file_sha256(tmp)
  delay = float(os.environ.get(TEST_DELAY_ENV, "0") or 0)
  if delay > 0:
    time.sleep(delay)
  fileio.upload(tmp, path)
  return digest


def shard_is_finished(out_dir: str, name: str, fingerprint: str) -> dict[str, Any] | None:
  """The shard's marker when the shard is finished for this plan, else None."""
  path = os.path.join(out_dir, name)
  marker = path + ".done"
  if not (fileio.exists(path) and fileio.exists(marker)):
    return None
  try:
    info = json.loads(fileio.read_text(marker))
  except (OSError, json.JSONDecodeError):
    return None
  if info.get("fingerprint") != fingerprint or info.get("sha256") != file_sha256(path):
    return None
  return info


def build_references(
    items: Sequence[PivotItem],
    out_dir: str,
    *,
    encoders: Mapping[str, Encoder],
    info: Mapping[str, Any],
    respond: Responder | None = None,
    batch_size: int = 8,
    filter_correct: bool = False,
    shard_size: int = 256,
    embed_fields: Sequence[str] = EMBED_FIELDS,
    process_index: int = 0,
    process_count: int = 1,
    wait_for_hosts_s: float = 3600.0,
    split_fn: Callable[[str], tuple[str, str]] | None = None,
    extract_fn: Callable[[str], str | None] | None = None,
    match_fn: Callable[[str | None, str | None], bool] | None = None,
    gold_fn: Callable[[str], str | None] | None = None,
) -> dict[str, Any] | None:
  """Builds (or resumes building) the reference shards and the manifest.

  Args:
    items: English questions in a fixed order, each with a response (imported) or without
      (then `respond` answers them).
    out_dir: Output directory (created).
    encoders: name -> function mapping a list of texts to [B,E] float32 embeddings.
    info: Recorded in the manifest and the plan fingerprint (source, its sha256, pivot model,
      prompt template, ...). Anything that changes the shards' content must be in here.
    respond: question texts -> pivot responses (batched by `batch_size`); required when an
      item has no response.
    batch_size: Questions per `respond` and encoder call.
    filter_correct: Keep only references whose final answer matches the gold answer (items
      without gold are kept and counted as unchecked).
    shard_size: Items per shard (before filtering).
    embed_fields: Which reference texts to embed ('response', 'reasoning', 'answer').
    process_index: This host; it builds shards i with i % process_count == process_index.
    process_count: Number of hosts.
    wait_for_hosts_s: How long process 0 waits for the other hosts' shards before writing the
      manifest.
    split_fn: response -> (reasoning, answer part); default `pbrl_jax.rewards`'.
    extract_fn: text -> canonical final answer or None; default `pbrl_jax.rewards`'.
    match_fn: (answer, gold) -> bool; default `pbrl_jax.rewards.answers_match`.
    gold_fn: gold label -> canonical form; default `pbrl_jax.rewards.gold_answer`.

  Returns:
    The manifest (on process 0), or None on other hosts.
  """
  if not items:
    raise DataError("no pivot questions to build references for")
  if any(f not in ("response", "reasoning", "answer") for f in embed_fields):
    raise ValueError(f"embed_fields must be among response/reasoning/answer: {embed_fields}")
  defaults = _default_answer_fns() if None in (split_fn, extract_fn, match_fn, gold_fn) else None
  split_fn = split_fn or defaults[0]
  extract_fn = extract_fn or defaults[1]
  match_fn = match_fn or defaults[2]
  gold_fn = gold_fn or defaults[3]
  if respond is None and any(it.response is None for it in items):
    raise ValueError("some items have no response and no pivot model (respond) was given")
  ids = [it.id for it in items]
  if len(set(ids)) != len(ids):
    raise DataError("duplicate ids among the pivot questions")
  fileio.makedirs(out_dir)
  plan = {"format_version": FORMAT_VERSION, "info": dict(info),
          "items_sha256": items_sha256(items), "filter_correct": filter_correct,
          "shard_size": shard_size, "embed_fields": list(embed_fields),
          "encoders": sorted(encoders)}
  fingerprint = hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()
                               ).hexdigest()
  n = math.ceil(len(items) / shard_size)
  names = [_shard_name(i, n) for i in range(n)]
  mine = [i for i in range(n) if i % process_count == process_index]

  _remove_leftovers(out_dir, n, mine)
  manifest_path = os.path.join(out_dir, MANIFEST)
  for i in mine:
    if shard_is_finished(out_dir, names[i], fingerprint) is not None:
      logging.info("pivot shard %s already finished, kept", names[i])
      continue
    if process_index == 0:
      fileio.remove(manifest_path)  # the set is about to change: no manifest until it is whole
    for stale in (os.path.join(out_dir, names[i]), os.path.join(out_dir, names[i]) + ".done"):
      fileio.remove(stale)
    chunk = items[i * shard_size:(i + 1) * shard_size]
    records, stats = _build_shard(chunk, encoders, respond, batch_size, filter_correct,
                                  embed_fields, split_fn, extract_fn, match_fn, gold_fn)
    path = os.path.join(out_dir, names[i])
    digest = _write_shard(path, records)
    atomic_write_json(path + ".done", {"fingerprint": fingerprint, "sha256": digest,
                                       "count": len(records), "stats": stats,
                                       "dims": _dims(encoders, records)})
    logging.info("pivot shard %s written: %d records (%s)", names[i], len(records), stats)

  if process_index != 0:
    return None
  markers = _wait_for_shards(out_dir, names, fingerprint, wait_for_hosts_s)
  if fileio.exists(manifest_path):
    old = json.loads(fileio.read_text(manifest_path))
    if old.get("fingerprint") == fingerprint:
      return old
  manifest = _manifest(fingerprint, info, items, filter_correct, encoders, embed_fields,
                       names, markers)
  atomic_write_json(manifest_path, manifest)
  return manifest


def _remove_leftovers(out_dir: str, n: int, mine: Sequence[int]) -> None:
  """Leftovers of killed runs: this host's temporaries, and shards of another layout."""
  for path in fileio.glob(out_dir, "refs-*"):
    base = os.path.basename(path)
    m = _SHARD_RE.match(base.split(".tmp-")[0].removesuffix(".done"))
    if m is None:
      continue
    if int(m.group(2)) != n or (".tmp-" in base and int(m.group(1)) in mine):
      fileio.remove(path)


def _wait_for_shards(out_dir: str, names: Sequence[str], fingerprint: str, timeout_s: float
                     ) -> list[dict[str, Any]]:
  """Process 0: every shard's `.done` marker, once all hosts have finished theirs."""
  deadline = time.monotonic() + timeout_s
  while True:
    markers = [shard_is_finished(out_dir, name, fingerprint) for name in names]
    if all(m is not None for m in markers):
      return markers
    if time.monotonic() > deadline:
      missing = [name for name, m in zip(names, markers) if m is None]
      raise TimeoutError(f"{out_dir}: shards not finished by the other hosts: {missing[:5]}")
    time.sleep(2.0)


def _manifest(fingerprint: str, info: Mapping[str, Any], items: Sequence[PivotItem],
              filter_correct: bool, encoders: Mapping[str, Encoder],
              embed_fields: Sequence[str], names: Sequence[str],
              markers: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """The manifest of a finished set of shards (counts, filter totals, encoder dimensions)."""
  totals: dict[str, int] = {}
  dims: dict[str, int] = {}
  for m in markers:
    for k, v in m["stats"].items():
      totals[k] = totals.get(k, 0) + v
    dims.update(m.get("dims", {}))
  for name, enc in encoders.items():
    if name not in dims:  # every reference was filtered out: ask the encoder itself
      dims[name] = int(np.asarray(enc(["dimension probe"])).shape[-1])
  return {
      "format_version": FORMAT_VERSION,
      "fingerprint": fingerprint,
      **dict(info),
      "counts": {"questions": len(items), "references": sum(m["count"] for m in markers)},
      "filter": {"filter_correct": filter_correct, **totals},
      "encoders": {name: dims.get(name) for name in sorted(encoders)},
      "embed_fields": list(embed_fields),
      "shards": [{"file": name, "count": m["count"], "sha256": m["sha256"]}
                 for name, m in zip(names, markers)],
  }


def _dims(encoders: Mapping[str, Encoder], records: Sequence[bytes]) -> dict[str, int]:
  if not records:
    return {}
  ref = decode_reference(records[0])
  return {name: int(ref.embeddings[k].shape[-1]) for name in encoders
          for k in ref.embeddings if k.startswith(name + "/")}


def _build_shard(chunk, encoders, respond, batch_size, filter_correct, embed_fields, split_fn,
                 extract_fn, match_fn, gold_fn) -> tuple[list[bytes], dict[str, int]]:
  stats = {"kept": 0, "dropped_wrong_answer": 0, "dropped_no_answer": 0, "unchecked_no_gold": 0}
  refs: list[Reference] = []
  for start in range(0, len(chunk), batch_size):
    batch = chunk[start:start + batch_size]
    todo = [k for k, it in enumerate(batch) if it.response is None]
    responses = [it.response for it in batch]
    if todo:
      got = respond([batch[k].question for k in todo])
      if len(got) != len(todo):
        raise RuntimeError(f"pivot model returned {len(got)} responses for {len(todo)} prompts")
      for k, r in zip(todo, got):
        responses[k] = r
    kept, answer_texts = [], []
    for it, resp in zip(batch, responses):
      reasoning, answer_part = split_fn(resp)
      answer = extract_fn(resp)
      gold = gold_fn(it.gold) if it.gold is not None else None
      if gold is None:
        stats["unchecked_no_gold"] += 1
      elif filter_correct and answer is None:
        stats["dropped_no_answer"] += 1
        continue
      elif filter_correct and not match_fn(answer, gold):
        stats["dropped_wrong_answer"] += 1
        continue
      kept.append(Reference(it.id, it.question, resp, reasoning, answer, gold, {}))
      # The embedded answer is the reward's answer segment: the final answer, else the part
      # after the reasoning (`rewards.score.Parsed.segments`).
      answer_texts.append(answer or answer_part)
    if not kept:
      continue
    emb: dict[str, np.ndarray] = {}
    for name, enc in encoders.items():
      for field in embed_fields:
        texts = (answer_texts if field == "answer" else
                 [getattr(r, field) or "" for r in kept])
        e = np.asarray(enc(texts), dtype=np.float32)
        if e.ndim != 2 or e.shape[0] != len(kept) or not np.all(np.isfinite(e)):
          raise RuntimeError(f"encoder {name!r} returned shape {e.shape} (or non-finite values) "
                             f"for {len(kept)} texts")
        emb[f"{name}/{field}"] = e
    for j, r in enumerate(kept):
      refs.append(dataclasses.replace(r, embeddings={k: v[j] for k, v in emb.items()}))
    stats["kept"] += len(kept)
  return [encode_reference(r) for r in refs], stats


def load_manifest(ref_dir: str) -> dict[str, Any]:
  path = os.path.join(ref_dir, MANIFEST)
  if not fileio.exists(path):
    raise DataError(f"{path}: no manifest; the pivot references are missing or unfinished "
                    "(run pbrl-pivot)")
  manifest = json.loads(fileio.read_text(path))
  if manifest.get("format_version") != FORMAT_VERSION:
    raise DataError(f"{where(path, None, 'format_version')}: {manifest.get('format_version')!r},"
                    f" expected {FORMAT_VERSION}")
  return manifest


def load_references(ref_dir: str, verify: bool = True) -> dict[str, Reference]:
  """All references by id, after checking each shard against the manifest's sha256."""
  manifest = load_manifest(ref_dir)
  out: dict[str, Reference] = {}
  for shard in manifest["shards"]:
    path = os.path.join(ref_dir, shard["file"])
    records = _read_shard(path, shard["sha256"] if verify else None)
    if len(records) != shard["count"]:
      raise DataError(f"{path}: {len(records)} records, manifest says {shard['count']}")
    for k, data in enumerate(records):
      try:
        ref = decode_reference(data)
      except (ValueError, KeyError) as e:
        raise DataError(f"{path}: record {k} is not a valid reference: {e}") from e
      if ref.id in out:
        raise DataError(f"{path}: record {k}: duplicate id {ref.id!r}")
      out[ref.id] = ref
  return out
