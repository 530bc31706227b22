"""One run per work directory: an exclusive ``flock`` on ``<workdir>/lock`` that names its holder.

The kernel drops a ``flock`` when its process dies, however it dies (SIGKILL included), so a lock
is held exactly as long as a live process holds it; the file's JSON (pid, host, start time) only
names the holder. A file left with content by a dead process is stale: the next run takes it over
and says so. On release the content is cleared, the file stays (unlinking a locked file races
with a process that has just opened it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["LOCK_FILE", "WorkdirLock", "WorkdirLockedError"]

LOCK_FILE = "lock"

log = logging.getLogger(__name__)


class WorkdirLockedError(RuntimeError):
  """Another live process holds the work directory."""


class WorkdirLock:
  """``with WorkdirLock(workdir): ...`` holds ``workdir`` for this process or raises ``WorkdirLockedError``.

  ``read_only`` is set (and nothing is locked) when the directory cannot be written at all: then
  no other run can write there either, and the caller must not try to.
  """

  def __init__(self, workdir: str | Path):
    self.path = Path(workdir) / LOCK_FILE
    self.read_only = False
    self._fd: int | None = None

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc: Any) -> None:
    self.release()

  def acquire(self) -> None:
    """Take the lock, or raise ``WorkdirLockedError`` naming the live holder."""
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        self.read_only = True
        return
      raise
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _describe(os.pread(fd, 4096, 0))
      os.close(fd)
      raise WorkdirLockedError(
        f"{self.path.parent} is in use by another run ({holder}); wait for it to finish or use another workdir"
      ) from None
    previous = os.pread(fd, 4096, 0)
    if previous.strip():
      log.warning("taking over the stale lock of %s (that process is gone)", _describe(previous))
    record = json.dumps(
      {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    )
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)
    self._fd = fd

  def release(self) -> None:
    """Clear the holder record and drop the lock."""
    if self._fd is None:
      return
    # A full disk cannot stop a truncation, but a vanished workdir can.
    with contextlib.suppress(OSError):
      os.ftruncate(self._fd, 0)
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None


def _describe(content: bytes) -> str:
  """``"pid 123 on host since ..."`` from a lock file's JSON, or what it holds."""
  try:
    holder = json.loads(content)
    return f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
  except (ValueError, KeyError, TypeError):
    return f"holder unknown, lock file content {content[:80]!r}"
