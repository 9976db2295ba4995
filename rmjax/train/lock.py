"""One writer per workdir: `rmjax train` holds an advisory lock (`fcntl.flock`) on
`<workdir>/.rmjax.lock` for the whole run, so a second train on the same workdir (a relaunched
job, two sweep workers) is refused at once, before any data is read or model loaded.

The OS drops the lock when its holder dies (even by kill -9): a stale lock file never blocks a
relaunch. The file holds the holder's pid and host for the refusal message and is removed when
the run ends. A workdir this run created is removed again when the run fails before it wrote a
checkpoint, so a failed start leaves nothing behind. Light on purpose (no jax): a test can hold
a lock from a bare `python -c`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
from typing import Optional

from rmjax.errors import ConfigError

LOCK_NAME = ".rmjax.lock"


def has_checkpoint(workdir: str) -> bool:
  """Whether any `checkpoints/<step>` (or a set-aside `diverged-<step>`) folder exists under
  `workdir` (nested runs included)."""
  for root, dirs, _ in os.walk(workdir):
    if os.path.basename(root) == "checkpoints" and any(
        d.isdigit() or d.startswith("diverged-") for d in dirs):
      return True
  return False


class WorkdirLock:
  """`with WorkdirLock(workdir):` -- exclusive for the block; `enabled=False` is a no-op (the
  processes other than 0 of a multi-process run, which share process 0's workdir)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir, self.enabled = workdir, enabled
    self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
    self.fd: Optional[int] = None
    self.created = False

  def __enter__(self) -> "WorkdirLock":
    if not self.enabled:
      return self
    folder = os.path.dirname(self.path)
    self.created = not os.path.exists(folder)
    os.makedirs(folder, exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        holder = os.read(fd, 200).decode("utf-8", "replace").split()
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES):
          raise
        pid, host = (holder + ["?", "?"])[:2]
        raise ConfigError(f"--workdir {self.workdir} is being trained by another process (pid "
                          f"{pid} on {host}): one writer per workdir; wait for it to finish, "
                          f"stop it, or use another --workdir") from None
      if self._is_current(fd):  # not a file its previous holder unlinked as we opened it
        break
      os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    self.fd = fd
    return self

  def _is_current(self, fd: int) -> bool:
    try:
      return os.stat(self.path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      return False

  def __exit__(self, exc_type, exc, tb) -> None:
    if self.fd is None:
      return
    if self._is_current(self.fd):  # after an --overwrite swap the file went with the old run
      os.unlink(self.path)
    os.close(self.fd)
    self.fd = None
    folder = os.path.dirname(self.path)
    if self.created and exc_type is not None and not has_checkpoint(folder):
      shutil.rmtree(folder, ignore_errors=True)  # a failed start leaves no workdir behind
