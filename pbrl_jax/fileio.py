"""Run outputs, local or in a bucket: atomic writes and the few file calls the library needs.

Every file the library writes for people or for a later run (configs, metrics, results,
reports, plots, pivot references, caches) goes through here, and so does every read of a run
directory. A path is a local path or a URL; 'gs://' URLs go through etils.epath (fsspec's
gcsfs, or TensorFlow's gfile when TensorFlow is installed), the layer Orbax writes the
checkpoints through, so one run directory holds everything.

Atomicity. Locally the data goes to a temporary file in the same directory, is flushed to
disk, and is renamed over the target (`os.replace` is atomic on POSIX). In an object store a
rename is a copy, but an object upload is itself atomic: the object appears whole, or not at
all, so the data is written straight to its name.

Object stores have no directories and no appends: `makedirs` is a no-op there, and `AppendLog`
rewrites its object whole at each flush.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import os
import re
import tempfile
import threading
import uuid
from typing import Any, Callable, Iterator

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
  """Writes text (UTF-8) or bytes to `path` atomically (one object upload for a URL)."""
  raw = data.encode("utf-8") if isinstance(data, str) else data
  if is_url(os.fspath(path)):
    _epath(path).write_bytes(raw)
    return os.fspath(path)

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
  if is_url(os.fspath(path)):
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format=os.path.splitext(os.fspath(path))[1][1:] or None)
    return atomic_write(path, buffer.getvalue())
  return _atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi))


SUPPORTED_SCHEMES = ("gs",)


class StorageError(OSError):
  """A run directory that cannot be used: an unsupported URL, or a store that refuses writes."""


def is_url(path: str | os.PathLike[str] | None) -> bool:
  """Whether `path` names a remote store ('gs://bucket/run') rather than a local path."""
  return bool(path) and _URL.match(os.fspath(path)) is not None


def absolute(path: str) -> str:
  """`path` made absolute; a URL already is."""
  return path if is_url(path) else os.path.abspath(path)


def _epath(path: str | os.PathLike[str]) -> Any:
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(os.fspath(path))


def _fresh(path: str | os.PathLike[str]) -> Any:
  """`_epath(path)`, with the store's listings asked again rather than taken from a cache.

  gcsfs keeps directory listings without expiry and answers `exists` from them, so objects
  that another host (or another client: Orbax's, tensorboardX's) wrote after a listing would
  stay invisible: process 0 would wait forever for the other hosts' pivot shards.
  """
  import fsspec  # pylint: disable=g-import-not-at-top
  store = type(fsspec.core.url_to_fs(os.fspath(path))[0])
  # Every client of the store in this process (fsspec keeps one per set of options; epath's
  # is created with its own), not only the default one.
  for client in list(getattr(store, "_cache", {}).values()):
    client.invalidate_cache()
  return _epath(path)


def exists(path: str | os.PathLike[str]) -> bool:
  return _fresh(path).exists() if is_url(path) else os.path.exists(path)


def isdir(path: str | os.PathLike[str]) -> bool:
  return _fresh(path).is_dir() if is_url(path) else os.path.isdir(path)


def listdir(path: str | os.PathLike[str]) -> list[str]:
  """Names in a directory (an object store's 'directory': the names under a prefix)."""
  if is_url(path):
    return [p.name for p in _fresh(path).iterdir()]
  return os.listdir(path)


def glob(directory: str | os.PathLike[str], pattern: str) -> list[str]:
  """Paths in `directory` whose name matches the shell pattern (one level, no recursion)."""
  if not isdir(directory):
    return []
  return [join(directory, name) for name in sorted(listdir(directory))
          if fnmatch.fnmatchcase(name, pattern)]


def join(path: str | os.PathLike[str], *parts: str) -> str:
  return os.path.join(os.fspath(path), *parts)


def makedirs(path: str | os.PathLike[str]) -> None:
  """Creates a local directory (and parents); nothing for a URL (stores have no directories)."""
  if not is_url(path):
    os.makedirs(path, exist_ok=True)


def remove(path: str | os.PathLike[str]) -> None:
  """Deletes a file or object; a missing one is not an error."""
  if is_url(path):
    p = _epath(path)
    if p.exists():
      p.unlink()
  elif os.path.exists(path):
    os.remove(path)


def move_tree(src: str, dst: str) -> None:
  """Moves a directory (with everything under it) to `dst`, whose parent exists.

  In an object store a directory is a name prefix: every object under it is moved (a
  server-side move or copy, then a delete), which epath's rename does not do.
  """
  if not is_url(src):
    os.rename(src, dst)
    return
  import fsspec  # pylint: disable=g-import-not-at-top
  fs, src_path = fsspec.core.url_to_fs(src)
  _, dst_path = fsspec.core.url_to_fs(dst)
  fs.mv(src_path, dst_path, recursive=True)
  fs.invalidate_cache()  # listings cached before the move would still show `src`


def read_bytes(path: str | os.PathLike[str]) -> bytes:
  if is_url(path):
    return _epath(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def read_text(path: str | os.PathLike[str]) -> str:
  return read_bytes(path).decode("utf-8")


def upload(local_path: str, path: str | os.PathLike[str]) -> None:
  """Moves a finished local file to `path`: a rename locally, one object upload for a URL."""
  if not is_url(path):
    os.replace(local_path, path)
    return
  with open(local_path, "rb") as f:
    _epath(path).write_bytes(f.read())
  os.remove(local_path)


@contextlib.contextmanager
def local_copy(path: str | os.PathLike[str]) -> Iterator[str]:
  """A local path holding `path`'s bytes, for readers that only open local files.

  A local `path` is given as it is; an object is copied to a temporary file that is removed
  on exit.
  """
  if not is_url(path):
    yield os.fspath(path)
    return
  fd, tmp = tempfile.mkstemp(prefix=".pbrl-", suffix="-" + os.path.basename(os.fspath(path)))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(read_bytes(path))
    yield tmp
  finally:
    os.remove(tmp)


def local_staging_dir(path: str | os.PathLike[str]) -> str:
  """Where a writer that only writes local files puts a file bound for `path`'s directory.

  The directory itself for a local path (so the final rename stays on one file system);
  the system's temporary directory for a URL (the file is uploaded, then removed).
  """
  if is_url(path):
    return tempfile.gettempdir()
  directory = os.path.dirname(os.path.abspath(os.fspath(path)))
  os.makedirs(directory, exist_ok=True)
  return directory


class AppendLog:
  """A text file written a line at a time, each flush durable on its own.

  Locally: opened for appending and flushed, so a killed run leaves whole lines. In an
  object store (no appends): the text is kept and the object rewritten whole at each flush,
  an atomic upload, so a reader sees the lines up to some flush and never a cut line.
  """

  def __init__(self, path: str):
    self.path = path
    self._remote = is_url(path)
    if self._remote:
      self._text = io.StringIO()
      if exists(path):
        self._text.write(read_text(path))
    else:
      self._file = open(path, "a", encoding="utf-8")

  def write(self, text: str) -> None:
    (self._text if self._remote else self._file).write(text)

  def flush(self) -> None:
    if self._remote:
      atomic_write(self.path, self._text.getvalue())
    else:
      self._file.flush()

  def close(self) -> None:
    if self._remote:
      self.flush()
    else:
      self._file.close()


def check_output_dir(path: str, *, timeout_s: float = 30.0) -> None:
  """Proves a run directory can be written before any work starts.

  A local directory is created. For a URL a probe object is written and deleted; a store
  that is unreachable, refuses the credentials or has no such bucket raises `StorageError`
  naming the URL within `timeout_s` (the clients' own retries can take minutes).
  """
  if not is_url(path):
    os.makedirs(path, exist_ok=True)
    return
  scheme = path.split("://", 1)[0].lower()
  if scheme not in SUPPORTED_SCHEMES:
    raise StorageError(f"{path}: {scheme}:// is not supported; give a local directory or a"
                       " gs:// URL")
  probe = join(path, f".pbrl-write-probe-{uuid.uuid4().hex}")
  outcome: list[BaseException | None] = []

  def attempt() -> None:
    try:
      atomic_write(probe, b"probe")
      remove(probe)
      outcome.append(None)
    except BaseException as e:  # pylint: disable=broad-except
      outcome.append(e)

  # A daemon thread: a client stuck in its retries cannot keep the process alive.
  worker = threading.Thread(target=attempt, name="pbrl-storage-probe", daemon=True)
  worker.start()
  worker.join(timeout_s)
  if not outcome:
    raise StorageError(f"{path}: no answer from the store within {timeout_s:.0f} s (is the"
                       " bucket reachable from this machine, and are credentials set?)")
  if outcome[0] is not None:
    raise StorageError(f"{path}: cannot write to the store: {type(outcome[0]).__name__}:"
                       f" {outcome[0]}") from outcome[0]


def require_output_dir(path: str, command: str) -> None:
  """`check_output_dir` for a command line: a failure exits with its message, no traceback."""
  try:
    check_output_dir(path)
  except StorageError as e:
    raise SystemExit(f"{command}: {e}") from None


def output_flag(flag_name: str) -> None:
  """Registers an absl validator: `--flag_name` is a local path or a supported URL.

  A URL of another scheme would otherwise reach the file calls and fail half-way, or land
  in a local folder named after it.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.register_validator(
      flag_name,
      lambda value: not is_url(value) or value.split("://", 1)[0].lower() in SUPPORTED_SCHEMES,
      message=f"only local paths and {', '.join(s + '://' for s in SUPPORTED_SCHEMES)} URLs are"
              " supported")


def refuse_remote(flag_name: str) -> None:
  """Registers an absl validator: `--flag_name` must be a local path, checked at parse time.

  For the commands whose outputs are not written through this module (the demo, pbrl-score,
  pbrl-compare): a URL would land in a local folder named 'gs:' while the log says "written
  to gs://...". The command is refused before any work instead.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.register_validator(
      flag_name, lambda value: not is_url(value),
      message=("remote stores (gs://, s3://, ...) are not supported by this command: give a"
               " local directory, or mount the bucket (gcsfuse) and give its mount path."
               " pbrl-pivot, pbrl-train and pbrl-eval write to gs:// directly."))
