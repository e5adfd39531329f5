#!/bin/sh
# Optional: a 32-bit MicroPython unix VM, to read `ansim bench firmware`'s heap in 32-bit words
# as on an ESP32 (the PyPI VM is 64-bit). Builds from Debian's micropython source package with
# gcc -m32; nothing is written in the repo. Needs root for apt-get (Debian / Ubuntu).
#
#   tools/build_vm32.sh [BUILD_DIR]          (default /tmp/ansim-vm32; make vm32 runs this)
#   ANSIM_MICROPYTHON=BUILD_DIR/micropython .venv/bin/ansim bench firmware
#
# FROZEN=1 also builds BUILD_DIR/micropython-frozen, with the device code frozen in through the
# manifest `ansim freeze` makes (as an ESP32 image built with it holds the code).
# SUITE picks the Debian release whose source is used (default trixie: a stable release, so
# the version does not move; sid has a newer one).
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-/tmp/ansim-vm32}
SUITE=${SUITE:-trixie}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

missing=""
for pkg in gcc-multilib libc6-dev-i386 dpkg-dev make python3 xz-utils; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    apt-get update -qq && apt-get install -y -qq $missing
fi

# Debian's source, through apt with a private list (the system's sources are left alone).
APT="$OUT/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
echo "deb-src http://deb.debian.org/debian $SUITE main" > "$APT/sources.list"
set -- -o Dir::Etc::sourcelist="$APT/sources.list" -o Dir::Etc::sourceparts=/nonexistent \
    -o Dir::State::Lists="$APT/lists" -o Dir::Cache="$APT/cache" -o APT::Sandbox::User=root
apt-get "$@" -qq update
rm -rf "$OUT/src" && mkdir "$OUT/src"
(cd "$OUT/src" && apt-get "$@" -qq source --download-only micropython \
    && dpkg-source -x micropython_*.dsc mp >/dev/null)
MP="$OUT/src/mp"

# The standard variant's frozen asyncio, without mip/ssl (not in the +ds tarball's submodules).
echo 'include("$(MPY_DIR)/extmod/asyncio")' > "$OUT/manifest.py"
FLAGS="MICROPY_FORCE_32BIT=1 MICROPY_PY_FFI=0 MICROPY_PY_SSL=0 MICROPY_PY_BTREE=0"
JOBS=$(nproc 2>/dev/null || echo 2)
make -s -C "$MP/mpy-cross" -j"$JOBS" >/dev/null
make -s -C "$MP/ports/unix" -j"$JOBS" BUILD=build-32 $FLAGS FROZEN_MANIFEST="$OUT/manifest.py" >/dev/null
cp "$MP/ports/unix/build-32/micropython" "$OUT/micropython"

if [ "${FROZEN:-0}" = 1 ]; then
    # the manifest `ansim freeze` makes for an ESP32 image, with the unix port's asyncio
    "$REPO/.venv/bin/ansim" freeze --out "$OUT/frozen" --include '$(MPY_DIR)/extmod/asyncio' >/dev/null
    make -s -C "$MP/ports/unix" -j"$JOBS" BUILD=build-32f $FLAGS FROZEN_MANIFEST="$OUT/frozen/manifest.py" >/dev/null
    cp "$MP/ports/unix/build-32f/micropython" "$OUT/micropython-frozen"
fi

"$OUT/micropython" -c "import sys; print('built', sys.implementation._machine, sys.version.split(';')[1].strip(), 'maxsize', sys.maxsize)"
echo "ANSIM_MICROPYTHON=$OUT/micropython"
