"""A local Google Cloud Storage server for the remote-workdir tests (the PyPI package
gcp-storage-emulator, JSON API over HTTP, in memory).

Run as a script: `python gcs_emulator.py PORT BUCKET` serves until killed. Clients reach it
through the environment `emulator_env` gives: gcsfs (epath) and google-cloud-storage
(tensorboardX) read STORAGE_EMULATOR_HOST, TensorStore (Orbax's arrays) reads
TENSORSTORE_GCS_HTTP_URL and takes GOOGLE_AUTH_TOKEN_FOR_TESTING as its credentials.

One gap of the emulator is filled here, as the real service behaves: a media download answers
with the object's generation in `x-goog-generation` and honours `ifGenerationNotMatch` (304
when the object is unchanged). TensorStore revalidates its cached OCDBT manifest that way;
without the header it fails with "Malformed StorageGeneration" on the second manifest write of
a checkpoint.
"""

import http
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def emulator_env(port: int) -> dict:
  url = f"http://127.0.0.1:{port}"
  return {
      "STORAGE_EMULATOR_HOST": url,
      "TENSORSTORE_GCS_HTTP_URL": url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
      # gcsfs asks a gRPC control plane for the bucket's layout first; the emulator has
      # none, and each ask would wait for its 60 s timeout.
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  }


def start(port: int, bucket: str, log_path: str) -> subprocess.Popen:
  """Starts the server in a subprocess and waits until it answers."""
  log = open(log_path, "w")  # pylint: disable=consider-using-with
  proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(port), bucket],
                          stdout=log, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline:
    try:
      with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
        return proc
    except OSError:
      if proc.poll() is not None:
        break
      time.sleep(0.1)
  proc.kill()
  raise RuntimeError(f"the GCS emulator did not start (log: {log_path})")


def _with_generation(download):
  """`download` answering as GCS does: the generation header, and 304 when unchanged."""
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=g-import-not-at-top

  def handler(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except NotFound:
      return download(request, response, storage, *args, **kwargs)
    not_match = request.query.get("ifGenerationNotMatch")
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])
    if not_match and not_match[0] == str(obj["generation"]):
      response.status = http.HTTPStatus.NOT_MODIFIED
      return None
    return download(request, response, storage, *args, **kwargs)

  return handler


def _serve(port: int, bucket: str) -> None:
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top
  patched = _with_generation(objects.download)
  swap = lambda h: patched if h is objects.download else h
  server.HANDLERS = tuple((regex, {m: swap(h) for m, h in methods.items()})
                          for regex, methods in server.HANDLERS)
  objects.download = patched  # objects.get calls it for alt=media
  srv = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  srv.start()
  while True:
    time.sleep(3600)


if __name__ == "__main__":
  _serve(int(sys.argv[1]), sys.argv[2])
