"""``os`` as firmware sees it on the virtual board: the VM's own, except ``rename``.

The unix port's ``VfsPosix`` mounted at ``/`` (the board's flash) fails ``os.rename`` with
absolute paths (ENOENT), while paths relative to ``/`` work; on a board both do, and firmware
that replaces a file atomically (write a new one, rename it over the old) relies on it.
"""

import os as _os
from os import *  # noqa: F401,F403 (listdir, remove, stat, ...)


def rename(old, new):
    here = _os.getcwd()
    _os.chdir("/")
    try:
        _os.rename(_from_root(old, here), _from_root(new, here))
    finally:
        _os.chdir(here)


def _from_root(path, here):
    if not path.startswith("/"):
        path = here.rstrip("/") + "/" + path
    return path.lstrip("/") or "."
