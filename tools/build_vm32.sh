#!/bin/sh
# Optional: a 32-bit MicroPython unix VM, to read `ansim bench firmware`'s heap in 32-bit words
# as on an ESP32 (the PyPI VM is 64-bit): tools/build_vm.sh with BITS=32 (see there).
#
#   tools/build_vm32.sh [BUILD_DIR]          (default /tmp/ansim-vm32; make vm32 runs this)
#   ANSIM_MICROPYTHON=BUILD_DIR/micropython .venv/bin/ansim bench firmware
set -eu
BITS=32 exec sh "$(dirname "$0")/build_vm.sh" "$@"
