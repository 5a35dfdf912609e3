"""One monitor process writes an SQLite store at a time: an exclusive fcntl lock on a file beside
the database (`monitor.db.lock`), holding the owner's process id and command line.

SQLite itself would let a second process open the file, and both would then count rows and prune
as if they were alone (the counts live in memory) while contending for the write lock. The lock
is the kernel's: it goes with the process, however it ends (SIGKILL included), so a stale file
never blocks a restart. The file is left in place (removing it would race with a process that
has just opened it).
"""
from __future__ import annotations

import errno
import fcntl
import os
import sys
import threading
from pathlib import Path

from monitoring.store import StoreError

__all__ = ["WriterLock"]

_held: dict[Path, list] = {}   # path -> [fd, holders]: one lock per path and process
_held_lock = threading.Lock()


class WriterLock:
    """`acquire()` or raise StoreError naming the file and the process that holds it; `release()`.
    Within one process the lock is shared (POSIX locks belong to the process, and closing any
    descriptor of the file would drop it), so it is counted and released by the last holder."""

    def __init__(self, db_path: str | Path):
        self.db_path = Path(db_path)
        self.path = self.db_path.with_name(self.db_path.name + ".lock").resolve()
        self._acquired = False

    def acquire(self) -> "WriterLock":
        with _held_lock:
            held = _held.get(self.path)
            if held is not None:
                held[1] += 1
                self._acquired = True
                return self
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read(fd)
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise StoreError(f"cannot lock {self.path}: {exc.strerror}") from exc
                raise StoreError(f"{self.db_path} is already written by another monitor, "
                                 f"{holder or 'a process that has not said which'}; stop it or give this "
                                 f"one another --db") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"process {os.getpid()} ({' '.join(sys.argv)[:200]})\n".encode())
            _held[self.path] = [fd, 1]
            self._acquired = True
            return self

    def release(self) -> None:
        with _held_lock:
            if not self._acquired:
                return
            self._acquired = False
            held = _held[self.path]
            held[1] -= 1
            if held[1] == 0:
                del _held[self.path]
                os.close(held[0])   # drops the kernel's lock


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 300, 0).decode(errors="replace").strip()
    except OSError:
        return ""
