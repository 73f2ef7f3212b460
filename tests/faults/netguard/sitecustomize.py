"""Network guard for the offline test: every Python process started with this directory on
PYTHONPATH refuses non-loopback connections and name lookups, and records each attempt in
the file named by PBRL_NET_GUARD_LOG (the test asserts it stays empty)."""

import errno
import os
import socket

_LOG = os.environ.get("PBRL_NET_GUARD_LOG", "")
_LOOPBACK = {"127.0.0.1", "::1", "localhost", "0.0.0.0", ""}
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex
_getaddrinfo = socket.getaddrinfo


def _record(what: str) -> None:
  if _LOG:
    with open(_LOG, "a", encoding="utf-8") as f:
      f.write(f"pid {os.getpid()}: {what}\n")


def _allowed(address) -> bool:
  if not isinstance(address, tuple):  # AF_UNIX path
    return True
  return str(address[0]) in _LOOPBACK


def _guarded_connect(self, address):
  if not _allowed(address):
    _record(f"connect {address!r}")
    raise OSError(errno.ENETUNREACH, f"network disabled in the offline test: {address!r}")
  return _connect(self, address)


def _guarded_connect_ex(self, address):
  if not _allowed(address):
    _record(f"connect_ex {address!r}")
    return errno.ENETUNREACH
  return _connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
  if host is not None and str(host) not in _LOOPBACK and not str(host).startswith("127."):
    _record(f"getaddrinfo {host!r}")
    raise socket.gaierror(socket.EAI_NONAME, f"name lookup disabled in the offline test: {host}")
  return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
socket.getaddrinfo = _guarded_getaddrinfo
