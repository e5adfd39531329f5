#!/bin/sh
# Installs the Debian / Raspberry Pi OS packages that ansim needs when they are missing:
# mosquitto (private brokers in tests and the demo), socat (virtual serial lines and boards),
# dbus (a private bus with a fake BlueZ in the BLE advertising tests), python3-venv (for .venv),
# e2fsprogs and util-linux (a small ext4 data_dir that fills up; setpriv and unshare for
# read-only stores), systemd (systemd-analyze verifies the agent's unit), chromium (the
# console's page tested in a real headless browser, driven by Playwright without a browser
# download of its own) and fonts-nanum (NanumGothic: the page's Korean text). Idempotent and
# silent when everything is present.
set -eu
missing=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$missing mosquitto"
command -v socat >/dev/null 2>&1 || missing="$missing socat"
command -v dbus-daemon >/dev/null 2>&1 || missing="$missing dbus"
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$missing python3-venv"
command -v mkfs.ext4 >/dev/null 2>&1 || [ -x /sbin/mkfs.ext4 ] || missing="$missing e2fsprogs"
{ command -v setpriv && command -v unshare && command -v mount; } >/dev/null 2>&1 || missing="$missing util-linux mount"
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -f /usr/share/fonts/truetype/nanum/NanumGothic.ttf ] || missing="$missing fonts-nanum"
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
else
    echo "ansim needs these Debian packages:$missing; run as root: apt-get install -y$missing" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ansim needs$missing and this is not a Debian-like system (no apt-get): install them by hand" >&2
    exit 1
fi
echo "installing system packages:$missing"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
