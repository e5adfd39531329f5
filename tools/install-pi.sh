#!/bin/sh
# Installs the ansim edge agent as a systemd service on a Raspberry Pi (Raspberry Pi OS / Debian
# bookworm, aarch64 or any other architecture Debian has):
#
#   sudo sh tools/install-pi.sh [--site SITE_DIR] [--no-ble] [WHEEL_OR_SOURCE_DIR]
#
# - apt: python3, python3-venv, mosquitto (the Pi's broker for bells and streetlights), procps
#   (/bin/kill for the unit's reload) and bluez (BLE intake; --no-ble leaves it out). Runtime
#   packages only: no compiler, no test tools.
# - the system user and group "ansim", in the groups dialout (serial radios) and bluetooth (BLE);
#   the group bluetooth is created when bluez is not installed, since the unit names it.
# - ansim into /opt/ansim/.venv (owned by root, so the service cannot change its own code), from
#   WHEEL_OR_SOURCE_DIR (default: the source tree this script is in), without the dev extras,
#   pinned by the constraints.txt found beside the wheel or in the source tree.
# - /etc/ansim/agent.toml from agent.example.toml, only if there is none (never overwritten;
#   root:ansim 640); /etc/ansim is root:ansim 750. /var/lib/ansim is made by systemd
#   (StateDirectory=ansim in the unit), owned by ansim, mode 700.
# - /etc/systemd/system/ansim-agent.service, from the installed package.
# - with --site: the mosquitto files that `ansim provision` wrote under SITE_DIR/mosquitto/
#   (ansim.conf into /etc/mosquitto/conf.d/, passwd and acl into /etc/mosquitto/ansim/, the
#   agent's broker password into /etc/ansim/local-mqtt.password).
# - when systemd runs (PID 1): daemon-reload, enable; start (restart on an upgrade) only once
#   /etc/ansim/agent.toml is a valid configuration. In a chroot or container without systemd
#   these steps are skipped with a message.
# Idempotent: a rerun upgrades ansim and the unit and changes nothing else.
set -eu

PREFIX=/opt/ansim
VENV=$PREFIX/.venv
ETC=/etc/ansim
CONFIG=$ETC/agent.toml
UNIT=/etc/systemd/system/ansim-agent.service
SERVICE_USER=ansim

die() { echo "install-pi: $*" >&2; exit 1; }
done_list=""
did() { echo "  - $*"; done_list="$done_list
  - $*"; }

all_args="$*"
site=""
ble=1
source_arg=""
while [ $# -gt 0 ]; do
    case "$1" in
        --site) [ $# -ge 2 ] || die "--site needs a directory (the one given to ansim provision --site)"
                site=$2; shift 2 ;;
        --site=*) site=${1#--site=}; shift ;;
        --no-ble) ble=0; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        -*) die "unknown option $1 (usage: install-pi.sh [--site SITE_DIR] [--no-ble] [WHEEL_OR_SOURCE_DIR])" ;;
        *) [ -z "$source_arg" ] || die "one wheel or source directory only (got $source_arg and $1)"
           source_arg=$1; shift ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root: sudo sh $0 $all_args"
command -v apt-get >/dev/null 2>&1 || die "no apt-get: this installs on Raspberry Pi OS or Debian (bookworm or newer)"

# What to install: a wheel, or a source tree (default: the one holding this script).
if [ -z "$source_arg" ]; then
    here=$(cd "$(dirname "$0")/.." && pwd)
    [ -f "$here/pyproject.toml" ] || die "give a wheel or a source directory: $here holds no pyproject.toml"
    source_arg=$here
fi
case "$source_arg" in
    *.whl) [ -f "$source_arg" ] || die "no such wheel: $source_arg"
           source_kind=wheel; source_path=$(cd "$(dirname "$source_arg")" && pwd)/$(basename "$source_arg")
           constraints=$(dirname "$source_path")/constraints.txt ;;
    *) [ -f "$source_arg/pyproject.toml" ] || die "$source_arg is neither a .whl file nor a source tree with pyproject.toml"
       source_kind=tree; source_path=$(cd "$source_arg" && pwd)
       constraints=$source_path/constraints.txt ;;
esac
if [ -n "$site" ]; then
    [ -d "$site" ] || die "--site $site: no such directory"
    site=$(cd "$site" && pwd)
fi

echo "Installing the ansim edge agent from $source_path"

# 1. System packages (runtime only).
# procps: /bin/kill, the unit's ExecReload (Raspberry Pi OS has it; a minimal Debian does not).
packages="python3 python3-venv mosquitto procps"
[ "$ble" -eq 1 ] && packages="$packages bluez"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed (network? /etc/apt/sources.list?)"
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null \
        || die "apt-get install$missing failed"
    did "apt packages installed:$missing"
else
    did "apt packages already present: $packages"
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || die "ansim needs Python 3.11 or newer; python3 here is $(python3 -V 2>&1) (Raspberry Pi OS bookworm has 3.11)"

# 2. The service user: system account, no login, no home of its own (its state is /var/lib/ansim).
if ! getent group bluetooth >/dev/null; then
    groupadd --system bluetooth  # the unit's SupplementaryGroups names it; bluez would make it
    did "group bluetooth created (bluez not installed)"
fi
if ! getent passwd "$SERVICE_USER" >/dev/null; then
    getent group "$SERVICE_USER" >/dev/null || groupadd --system "$SERVICE_USER"
    useradd --system --gid "$SERVICE_USER" --home-dir /var/lib/ansim --no-create-home \
        --shell /usr/sbin/nologin --comment "ansim edge agent" "$SERVICE_USER"
    did "system user $SERVICE_USER created"
fi
for g in dialout bluetooth; do
    if getent group "$g" >/dev/null && ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx "$g"; then
        usermod -a -G "$g" "$SERVICE_USER"
        did "$SERVICE_USER added to group $g"
    fi
done

# 3. ansim in its own venv, runtime dependencies only.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    rm -rf "$VENV"
    mkdir -p "$PREFIX"
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (is python3-venv installed?)"
    did "venv created: $VENV"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
if [ "$source_kind" = tree ]; then
    # Build from a copy: pip builds in place and would leave root-owned build/ and egg-info
    # folders in the user's clone.
    tar -C "$source_path" --exclude=.git --exclude=.venv --exclude=build --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis --exclude=demo-run \
        -cf - . | { mkdir "$work/src" && tar -C "$work/src" -xf -; }
    "$VENV/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$work/dist" "$work/src" \
        || die "building the ansim wheel from $source_path failed (pip's message above)"
    wheel=$(ls "$work"/dist/ansim-*.whl)
else
    wheel=$source_path
fi
set --
if [ -f "$constraints" ]; then
    set -- -c "$constraints"
    pins="pinned by $constraints"
else
    pins="no constraints.txt beside it: newest versions within pyproject.toml's ranges"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check "$@" "$wheel" \
    || die "pip install $wheel into $VENV failed (pip's message above)"
# The same version again (a rerun from a changed tree) is reinstalled, so the code is the new one.
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$wheel" \
    || die "pip install $wheel into $VENV failed (pip's message above)"
version=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("ansim"))')
did "ansim $version installed in $VENV ($pins)"
data=$("$VENV/bin/python" -c 'import importlib.util; print(importlib.util.find_spec("ansim_agent").submodule_search_locations[0])')
[ -f "$data/ansim-agent.service" ] && [ -f "$data/agent.example.toml" ] \
    || die "the installed package lacks ansim-agent.service or agent.example.toml in $data"

# 4. Configuration: never overwritten.
install -d -m 750 -o root -g "$SERVICE_USER" "$ETC"
if [ -e "$CONFIG" ]; then
    did "$CONFIG kept as it was"
else
    install -m 640 -o root -g "$SERVICE_USER" "$data/agent.example.toml" "$CONFIG"
    did "$CONFIG written from agent.example.toml (root:$SERVICE_USER 640): edit it"
fi

# 5. The unit.
if [ -f "$UNIT" ] && cmp -s "$data/ansim-agent.service" "$UNIT"; then
    did "$UNIT unchanged"
else
    install -D -m 644 -o root -g root "$data/ansim-agent.service" "$UNIT"
    did "$UNIT installed"
fi

# 6. The site's mosquitto configuration (from ansim provision), if asked for and present.
mosquitto_changed=0
if [ -n "$site" ]; then
    if [ -f "$site/mosquitto/ansim.conf" ]; then
        # Owned by mosquitto, readable by nobody else (as README "The Pi's mosquitto on the LAN").
        install -d -m 700 -o mosquitto -g mosquitto /etc/mosquitto/ansim
        for f in passwd acl; do
            if [ -f "$site/mosquitto/$f" ]; then
                install -m 600 -o mosquitto -g mosquitto "$site/mosquitto/$f" "/etc/mosquitto/ansim/$f"
                did "/etc/mosquitto/ansim/$f installed (mosquitto 600)"
            fi
        done
        if [ -f "$site/mosquitto/agent.password" ]; then
            install -m 600 -o "$SERVICE_USER" -g "$SERVICE_USER" "$site/mosquitto/agent.password" "$ETC/local-mqtt.password"
            did "$ETC/local-mqtt.password installed ($SERVICE_USER 600): the agent's broker login"
        fi
        install -m 644 -o root -g root "$site/mosquitto/ansim.conf" /etc/mosquitto/conf.d/ansim.conf
        did "/etc/mosquitto/conf.d/ansim.conf installed from $site/mosquitto/ansim.conf"
        grep -q 'include_dir[[:space:]]\+/etc/mosquitto/conf.d' /etc/mosquitto/mosquitto.conf 2>/dev/null \
            || echo "install-pi: warning: /etc/mosquitto/mosquitto.conf has no 'include_dir /etc/mosquitto/conf.d': add it" >&2
        mosquitto_changed=1
    else
        echo "install-pi: warning: $site/mosquitto/ansim.conf not found: mosquitto keeps its own configuration" \
             "(run ansim provision for this site first)" >&2
    fi
fi

# 7. systemd: only where it runs.
if [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && ! ischroot 2>/dev/null; then
    systemctl daemon-reload
    systemctl enable -q ansim-agent.service
    did "ansim-agent.service enabled (starts at boot)"
    if [ "$mosquitto_changed" -eq 1 ]; then
        systemctl restart mosquitto.service && did "mosquitto restarted with the site's configuration"
    fi
    # Exit 2 is a bad configuration: the agent would stop at once (RestartPreventExitStatus=2).
    rc=0
    "$VENV/bin/ansim" agent status --config "$CONFIG" >/dev/null 2>"$work/status.err" || rc=$?
    if [ "$rc" -eq 2 ]; then
        did "not started: $CONFIG is not ready yet: $(tail -n 1 "$work/status.err")"
    else
        systemctl restart ansim-agent.service && did "ansim-agent.service (re)started"
    fi
else
    did "systemd is not running here (chroot or container): daemon-reload, enable and start skipped"
fi

cat <<EOF

Done. Next steps:
  1. Edit $CONFIG ([agent] id, position, registry; [center] host and TLS files;
     keys readable only by $SERVICE_USER: chown $SERVICE_USER and chmod 600).
  2. Provision the devices into a site outside /home (the unit's ProtectHome=true hides /home
     from the agent), e.g. sudo $VENV/bin/ansim provision add --site $ETC/site ...;
     sudo chown -R $SERVICE_USER:$SERVICE_USER $ETC/site; rerun this script with --site $ETC/site
     (mosquitto's logins and ACL); in $CONFIG: [agent] registry = "site/registry.toml",
     [local_mqtt] username = "ansim-agent", password_file = "$ETC/local-mqtt.password".
  3. sudo systemctl restart ansim-agent && systemctl status ansim-agent
  4. sudo -u $SERVICE_USER $VENV/bin/ansim agent status --config $CONFIG   (0 healthy, 3 degraded)
     journalctl -u ansim-agent -f   (JSON log lines)
EOF
