"""One agent per data directory.

Two agents on one ``agent.db`` would both deliver its outbox, both count replay counters and
fight over the center's session: the second one started by mistake (a manual
``ansim agent run`` beside the systemd service) must stop at once, saying which process is
the first. ``<data_dir>/agent.lock`` is held with ``flock(LOCK_EX | LOCK_NB)`` for the life of
the agent and holds its pid. The kernel releases the lock when the process ends, however it
ends (``kill -9``, a crash), so a stale file never blocks a restart: the pid in it is only
read to name the holder.
"""

import fcntl
import os
import time
from pathlib import Path

LOCK_NAME = "agent.lock"
# `ansim agent status` takes a shared lock for a moment to see whether an agent holds it;
# a starting agent retries this long before it concludes that another agent is there.
RETRY_S = 1.0
_POLL_S = 0.02


class DataDirBusy(Exception):
    """Another live process holds the data directory's lock."""

    def __init__(self, pid, data_dir):
        super().__init__(pid, data_dir)
        self.pid, self.data_dir = pid, Path(data_dir)

    def __str__(self):
        return ("another agent (pid %s) already uses data_dir %s: stop it first (`systemctl stop ansim-agent`) "
                "or give this one another [agent] data_dir" % (self.pid or "unknown", self.data_dir))


class DataDirLock:
    """``with DataDirLock(data_dir):`` or ``acquire()`` / ``release()``; ``DataDirBusy`` when
    another process holds it, ``OSError`` when the lock file cannot be opened."""

    def __init__(self, data_dir):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_NAME
        self._fd = None

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            deadline = time.monotonic() + RETRY_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise DataDirBusy(_read_pid(fd), self.data_dir) from None
                    time.sleep(_POLL_S)
            os.ftruncate(fd, 0)
            os.pwrite(fd, b"%d\n" % os.getpid(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)  # no stale pid for a person reading the file
            finally:
                os.close(self._fd)  # closing the last descriptor releases the lock
                self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def holder(data_dir):
    """The pid of the agent that holds ``data_dir`` (0 when it has not written it yet), or
    None when no process holds it. Read-only: never creates the lock file."""
    try:
        fd = os.open(Path(data_dir) / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd, wait_s=0.5):
    """The pid the holder wrote; it writes it just after locking, so wait briefly for it."""
    deadline = time.monotonic() + wait_s
    while True:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(_POLL_S)
