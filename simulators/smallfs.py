"""A small private filesystem that a test can fill up, make read-only and free again: to see
what the agent does when the disk holding its data_dir is full or read-only.

``tmpfs`` (the default) is a ``mount -t tmpfs -o size=N``: no block device, no mkfs, nothing
to install, and a leaked mount costs at most N bytes of memory. ``ext4`` is an image file
(``truncate`` + ``mkfs.ext4 -m 0``, e2fsprogs, which Debian and Raspberry Pi OS always have)
loop-mounted, as on a Pi's SD card; the loop device detaches itself on unmount. ``-m 0``:
ext4 keeps 5 % for root by default, and the agent in the tests runs as root, so the disk
would never look full to it.

Mounting needs root (CAP_SYS_ADMIN): :class:`MountUnavailable` otherwise. The mount is in
the caller's mount namespace, so child processes (the agent under test) see it; it is
always unmounted on exit, lazily if something still holds a file open on it (then
:class:`MountError` says so, unless another error is already on its way).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BALLAST = "ballast"
_CHUNK = 1 << 20


class MountUnavailable(RuntimeError):
    """Mounting is not possible here (not root); the message says why."""


class MountError(RuntimeError):
    """A mount, remount or unmount failed; the message has the command's output."""


class SmallFilesystem:
    """A context manager: mounts a ``size_bytes`` filesystem of ``kind`` ("tmpfs" or "ext4")
    at ``directory`` (a new temporary directory by default), yields itself; ``path`` is the
    mount point. Always unmounted on exit."""

    def __init__(self, size_bytes: int, kind: str = "tmpfs", directory: Path | str | None = None) -> None:
        if kind not in ("tmpfs", "ext4"):
            raise ValueError("kind must be 'tmpfs' or 'ext4', not %r" % (kind,))
        self.size_bytes, self.kind = int(size_bytes), kind
        self._owns_dir = directory is None
        self.path = Path(tempfile.mkdtemp(prefix="ansim-smallfs-") if directory is None else directory)
        self._image: Path | None = None
        self.mounted = False

    # -- mount and unmount ---------------------------------------------------------------------

    def mount(self) -> SmallFilesystem:
        if os.geteuid() != 0:
            raise MountUnavailable("mounting a small %s needs root (CAP_SYS_ADMIN), and the agent under test "
                                   "must see the mount; running as uid %d: run `sudo make test` (CI runs as root)"
                                   % (self.kind, os.geteuid()))
        self.path.mkdir(parents=True, exist_ok=True)
        if self.kind == "tmpfs":
            _run(["mount", "-t", "tmpfs", "-o", "size=%d,mode=0755" % self.size_bytes, "tmpfs", str(self.path)])
        else:
            mkfs = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/usr/sbin:/sbin")
            if mkfs is None:  # tools/system-packages.sh installs it: a broken setup, not a skip
                raise MountError("mkfs.ext4 not found: `apt-get install e2fsprogs` (make test does)")
            fd, image = tempfile.mkstemp(prefix="ansim-smallfs-", suffix=".img")
            os.close(fd)
            self._image = Path(image)
            os.truncate(self._image, self.size_bytes)
            _run([mkfs, "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(self._image)])
            _run(["mount", "-o", "loop", str(self._image), str(self.path)])
        self.mounted = True
        return self

    def unmount(self) -> None:
        """Unmount; if busy, detach lazily (nothing stays visible) and raise MountError."""
        if not self.mounted:
            self._cleanup()
            return
        self.mounted = False
        busy = subprocess.run(["umount", str(self.path)], capture_output=True, text=True)
        try:
            if busy.returncode != 0:
                subprocess.run(["umount", "--lazy", str(self.path)], capture_output=True, text=True)
                raise MountError("umount %s failed (%s); detached lazily: a process still had files open on it"
                                 % (self.path, (busy.stderr or busy.stdout).strip()))
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self._image is not None:
            self._image.unlink(missing_ok=True)
            self._image = None
        if self._owns_dir:
            try:
                self.path.rmdir()
            except OSError:
                pass

    def __enter__(self) -> SmallFilesystem:
        try:
            return self.mount()
        except BaseException:
            self._cleanup()
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.unmount()
        except MountError:
            if exc_type is None:
                raise

    # -- space ---------------------------------------------------------------------------------

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer could still use (statvfs f_bavail)."""
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave_bytes: int) -> int:
        """Write a ballast file until at most ``leave_bytes`` (rounded to the block size) stay
        free; returns what is free then. Appends to a ballast already there."""
        with open(self.path / BALLAST, "ab") as ballast:
            while True:
                free = self.free_bytes()
                if free <= leave_bytes:
                    break
                ballast.write(b"\0" * min(_CHUNK, free - leave_bytes))
                ballast.flush()
                os.fsync(ballast.fileno())  # ext4 allocates the blocks here (delayed allocation)
        return self.free_bytes()

    def release(self) -> int:
        """Delete the ballast; returns the bytes free afterwards."""
        (self.path / BALLAST).unlink(missing_ok=True)
        return self.free_bytes()

    def remount(self, *, read_only: bool) -> None:
        """Make the filesystem read-only (as the kernel does after I/O errors) or writable again."""
        _run(["mount", "-o", "remount,%s" % ("ro" if read_only else "rw"), str(self.path)])


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise MountError("%s failed (exit %d): %s" % (" ".join(argv), done.returncode,
                                                       (done.stderr or done.stdout).strip()))
