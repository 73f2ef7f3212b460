"""Atomic writes: a reader, or a run killed half-way, never sees a partial file.

Every file the library writes for people or for a later run (configs, metrics, results,
reports, plots) goes through here: the data goes to a temporary file in the same directory,
is flushed to disk, and is renamed over the target (`os.replace` is atomic on POSIX).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any, Callable

# A URL scheme ('gs://', 's3://', 'file://'): a path no local file call can write to.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _atomic(path: str | os.PathLike[str], write: Callable[[str], None]) -> str:
  """Calls `write(tmp_path)`, then renames the temporary file to `path`; returns `path`."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  base = os.path.basename(path)
  stem, ext = os.path.splitext(base)
  # The extension stays last: writers such as matplotlib pick the format from it.
  fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=directory)
  os.close(fd)
  try:
    write(tmp)
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> str:
  """Writes text (UTF-8) or bytes to `path` atomically."""
  raw = data.encode("utf-8") if isinstance(data, str) else data

  def write(tmp: str) -> None:
    with open(tmp, "wb") as f:
      f.write(raw)

  return _atomic(path, write)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 1,
                      default: Callable[[Any], Any] | None = None,
                      allow_nan: bool = True) -> str:
  """Writes `obj` as JSON (UTF-8, non-ASCII kept, newline-terminated) atomically."""
  text = json.dumps(obj, indent=indent, ensure_ascii=False, default=default,
                    allow_nan=allow_nan)
  return atomic_write(path, text + "\n")


def atomic_write_jsonl(path: str | os.PathLike[str], rows: Any, *,
                       allow_nan: bool = True) -> str:
  """Writes one JSON object per line atomically."""
  return atomic_write(path, "".join(
      json.dumps(r, ensure_ascii=False, allow_nan=allow_nan) + "\n" for r in rows))


def atomic_savefig(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> str:
  """Saves a matplotlib figure atomically (the format follows `path`'s extension)."""
  return _atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi))


def is_url(path: str | None) -> bool:
  """Whether `path` names a remote store ('gs://bucket/run') rather than a local path."""
  return bool(path) and _URL.match(path) is not None


def refuse_remote(flag_name: str) -> None:
  """Registers an absl validator: `--flag_name` must be a local path, checked at parse time.

  Every output is written with local file calls, so `--workdir gs://bucket/run` would land in
  a local folder named 'gs:', which a preempted VM takes with it while the log says
  "written to gs://...". The command is refused before any work instead. A bucket mounted
  with gcsfuse is a local path and works.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.register_validator(
      flag_name, lambda value: not is_url(value),
      message=("remote stores (gs://, s3://, ...) are not supported: outputs are written with"
               " local file calls and would land in a local folder named after the URL. Give"
               " a local directory, or mount the bucket (gcsfuse) and give its mount path."))
