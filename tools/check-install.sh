#!/bin/sh
# The Pi install, checked in a clean Debian bookworm root (make test-install; not part of make test).
#
# 1. debootstrap --variant=minbase bookworm, arm64 under qemu-user-static when this machine can run
#    it (binfmt_misc), else the machine's own architecture; systemd added, as on a Pi. The finished
#    root is kept as a tarball in $CACHE (with apt's and pip's downloads), so a rerun is fast.
# 2. The working tree is copied into the root as a user's clone (/home/pi/ansim) and
#    `sh tools/install-pi.sh` runs there under chroot, as root, as a user would run it with sudo.
# 3. A site is provisioned with the installed `ansim provision` (one bell), and install-pi.sh
#    --site runs again to install its mosquitto files (SITE/mosquitto/ansim.conf, passwd, acl):
#    the rerun is also the idempotency check.
# 4. `systemd-analyze verify` on the installed unit, inside the root.
# 5. In a private network namespace (loopback only): the Pi's mosquitto with the site's
#    configuration and a second mosquitto as the center; the agent started as the unit's ExecStart
#    says, as user ansim, with the unit's environment, UMask and state directory, and a
#    NOTIFY_SOCKET that must receive READY=1; then `ansim agent status` must exit 0 or 3.
# Everything mounted is unmounted and every process started in the root is stopped, always; the
# root is removed after a passed run and kept after a failed one.
#
# Settings (environment): ANSIM_CHECK_ARCH (arm64 or amd64; default arm64 if emulation works),
# ANSIM_CHECK_CACHE (default /var/cache/ansim-debootstrap), ANSIM_CHECK_DIR (the root's parent;
# default /var/tmp/ansim-check-install), ANSIM_CHECK_MIRROR (default: the Debian mirror in this
# machine's apt sources).
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${ANSIM_CHECK_CACHE:-/var/cache/ansim-debootstrap}
WORK=${ANSIM_CHECK_DIR:-/var/tmp/ansim-check-install}
ROOT=$WORK/root
SUITE=bookworm
START=$(date +%s)

say() { echo "check-install [$(( $(date +%s) - START ))s]: $*"; }
die() { echo "check-install: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it debootstraps, chroots and mounts)"
command -v apt-get >/dev/null 2>&1 || die "needs a Debian-like machine with apt-get (for debootstrap)"

# --- cleanup, always -------------------------------------------------------------------------
mounted=""
cleanup() {
    rc=$?
    # Processes started inside the root (brokers, the agent), found by their root directory.
    if [ -d "$ROOT" ]; then
        for p in /proc/[0-9]*; do
            r=$(readlink "$p/root" 2>/dev/null) || continue
            [ "$r" = "$ROOT" ] && kill -KILL "${p#/proc/}" 2>/dev/null || true
        done
    fi
    for m in $mounted; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "check-install: could not unmount $m" >&2
    done
    mounted=""
    # A passed run leaves nothing behind but the cache; a failed one keeps the root to look at.
    if [ "$rc" -eq 0 ] && [ -d "$ROOT" ] && ! grep -q " $ROOT" /proc/mounts; then
        rm -rf "$ROOT"
    elif [ "$rc" -ne 0 ] && [ -d "$ROOT" ]; then
        echo "check-install: the root is kept for a look: $ROOT (logs: $WORK)" >&2
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Commands in the root get a clean environment, as after `sudo` on a Pi; pip gets this machine's
# CA bundle (copied in below), since a registry here may be reached through a TLS proxy whose CA
# only this machine's bundle holds. On a Pi, pip uses the system's certificates.
in_root() {
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        TERM=dumb PIP_CERT=/etc/ssl/ansim-check-host-ca.crt chroot "$ROOT" "$@"
}
mount_in() {  # mount_in TYPE_OR_--bind SOURCE TARGET_IN_ROOT
    mkdir -p "$ROOT$3"
    if [ "$1" = --bind ]; then mount --bind "$2" "$ROOT$3"; else mount -t "$1" "$2" "$ROOT$3"; fi
    mounted="$ROOT$3 $mounted"  # unmounted in reverse order
}

# --- tools on this machine --------------------------------------------------------------------
need=""
command -v debootstrap >/dev/null 2>&1 || need="$need debootstrap"
command -v ip >/dev/null 2>&1 || need="$need iproute2"
host_arch=$(dpkg --print-architecture)
ARCH=${ANSIM_CHECK_ARCH:-arm64}
if [ "$ARCH" != "$host_arch" ] && [ ! -x /usr/bin/qemu-aarch64-static ]; then
    need="$need qemu-user-static"
fi
if [ -n "$need" ]; then
    say "apt-get install$need"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
if [ "$ARCH" != "$host_arch" ]; then
    # qemu-user-static registers itself through systemd-binfmt, which does not run without
    # systemd: register the aarch64 interpreter by hand (F: the kernel keeps it open, so the
    # root needs no copy of qemu).
    [ -f /proc/sys/fs/binfmt_misc/register ] \
        || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && [ -f /proc/sys/fs/binfmt_misc/register ] \
        && [ -f /usr/lib/binfmt.d/qemu-aarch64.conf ]; then
        cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register 2>/dev/null || true
    fi
    if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
        say "aarch64 emulation is not available here (binfmt_misc); checking on $host_arch instead"
        ARCH=$host_arch
    fi
fi
say "Debian $SUITE minbase, $ARCH$( [ "$ARCH" != "$host_arch" ] && echo ' (qemu-user emulation)')"

# The Debian mirror this machine's apt uses (deb822 .sources or one-line .list).
mirror=${ANSIM_CHECK_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}' | grep -v security | head -n 1)
fi
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' | grep -v security | head -n 1)
fi
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list*: set ANSIM_CHECK_MIRROR"

# --- the clean root ---------------------------------------------------------------------------
mkdir -p "$CACHE/debs-$ARCH" "$CACHE/apt-archives-$ARCH/partial" "$CACHE/pip-$ARCH" "$WORK"
base=$CACHE/$SUITE-$ARCH-minbase-systemd.tar
# A root left by an interrupted run: nothing may still be mounted in it before it goes.
if grep -q " $ROOT" /proc/mounts; then
    die "something is still mounted under $ROOT (an earlier run): umount it first"
fi
rm -rf "$ROOT"
if [ ! -f "$base" ]; then
    say "debootstrap (first run; cached afterwards in $base)"
    foreign=""
    [ "$ARCH" != "$host_arch" ] && foreign=--foreign
    debootstrap --arch "$ARCH" $foreign --variant=minbase --cache-dir="$CACHE/debs-$ARCH" \
        "$SUITE" "$ROOT" "$mirror" > "$WORK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
    if [ -n "$foreign" ]; then
        chroot "$ROOT" /debootstrap/debootstrap --second-stage >> "$WORK/debootstrap.log" 2>&1 \
            || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap second stage failed"; }
    fi
    say "adding systemd (a Pi has it)"
    mount_in proc proc /proc
    mount_in --bind "$CACHE/apt-archives-$ARCH" /var/cache/apt/archives
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    in_root sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends systemd >/dev/null' \
        || die "apt-get install systemd in the root failed"
    cleanup_mounts=$mounted; mounted=""
    for m in $cleanup_mounts; do umount "$m"; done
    tar -C "$ROOT" -cf "$base.tmp" . && mv "$base.tmp" "$base"
    rm -rf "$ROOT"
fi
mkdir -p "$ROOT"
tar -C "$ROOT" -xf "$base"
say "clean root ready in $ROOT"

mount_in proc proc /proc
mount_in sysfs sysfs /sys
mount_in --bind /dev /dev
mount_in --bind "$CACHE/apt-archives-$ARCH" /var/cache/apt/archives
mount_in --bind "$CACHE/pip-$ARCH" /root/.cache/pip
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
mkdir -p "$ROOT/etc/ssl"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/ansim-check-host-ca.crt"
# As in any chroot: packages must not start their daemons here (no init to own them).
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"

# The user's clone: the working tree as it is, without what git ignores.
mkdir -p "$ROOT/home/pi/ansim"
tar -C "$REPO" --exclude=.git --exclude=.venv --exclude=build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis --exclude=demo-run \
    -cf - . | tar -C "$ROOT/home/pi/ansim" -xf -

# --- the install, as a user runs it -----------------------------------------------------------
say "running: sh tools/install-pi.sh (in /home/pi/ansim, as root in the chroot)"
t0=$(date +%s)
rc=0
in_root sh -c 'cd /home/pi/ansim && sh tools/install-pi.sh' > "$WORK/install-1.txt" 2>&1 || rc=$?
sed 's/^/    | /' "$WORK/install-1.txt"
[ "$rc" -eq 0 ] || die "install-pi.sh exited $rc"
say "install took $(( $(date +%s) - t0 ))s"

# A site: one bell, provisioned with the installed ansim; its mosquitto files if it wrote them.
SITE=/etc/ansim/site
in_root /opt/ansim/.venv/bin/ansim provision add --site "$SITE" --role bell \
    --position 37.5663,126.9779 --broker 127.0.0.1:1883 2>&1 | sed 's/^/    | /'
[ -f "$ROOT$SITE/mosquitto/ansim.conf" ] || die "ansim provision wrote no $SITE/mosquitto/ansim.conf"
say "the site's mosquitto files, from ansim provision: $(ls "$ROOT$SITE/mosquitto" | tr '\n' ' ')"
say "running again: sh tools/install-pi.sh --site $SITE (a rerun: nothing but the site changes)"
rc=0
in_root sh -c "cd /home/pi/ansim && sh tools/install-pi.sh --site $SITE" > "$WORK/install-2.txt" 2>&1 || rc=$?
sed 's/^/    | /' "$WORK/install-2.txt"
[ "$rc" -eq 0 ] || die "install-pi.sh --site exited $rc"
for f in /etc/mosquitto/conf.d/ansim.conf /etc/mosquitto/ansim/passwd /etc/mosquitto/ansim/acl /etc/ansim/local-mqtt.password; do
    [ -f "$ROOT$f" ] || die "install-pi.sh --site did not install $f"
done

# --- systemd-analyze verify -------------------------------------------------------------------
say "systemd-analyze verify /etc/systemd/system/ansim-agent.service"
rc=0
in_root systemd-analyze verify /etc/systemd/system/ansim-agent.service > "$WORK/verify.txt" 2>&1 || rc=$?
sed 's/^/    | /' "$WORK/verify.txt"
[ "$rc" -eq 0 ] || die "systemd-analyze verify exited $rc"
[ -s "$WORK/verify.txt" ] || echo "    | (no output: the unit is accepted)"

# --- the agent, started as the unit starts it -------------------------------------------------
exec_start=$(sed -n 's/^ExecStart=//p' "$ROOT/etc/systemd/system/ansim-agent.service")
[ -n "$exec_start" ] || die "the unit has no ExecStart"
config=$(echo "$exec_start" | sed -n 's/.*--config \([^ ]*\).*/\1/p')
say "ExecStart=$exec_start"
# The user's edit of the config: this site, the center on loopback without TLS, no radios.
cp "$ROOT/etc/ansim/agent.toml" "$ROOT/etc/ansim/agent.toml.example"
cat > "$ROOT$config" <<EOF
[agent]
id = "edge-check-01"
site = "check"
position = { lat = 37.5663, lon = 126.9779 }
registry = "site/registry.toml"
data_dir = "/var/lib/ansim"

[local_mqtt]
host = "127.0.0.1"
port = 1883
username = "ansim-agent"
password_file = "/etc/ansim/local-mqtt.password"

[center]
host = "127.0.0.1"
port = 18883
tls = false
district = "jung-gu"

[ble]
enabled = false

[serial]
enabled = false
EOF
in_root sh -c "chown root:ansim $config && chmod 640 $config && chown -R ansim:ansim $SITE"
cat > "$ROOT/tmp/center.conf" <<'EOF'
listener 18883 127.0.0.1
allow_anonymous true
EOF
cat > "$ROOT/tmp/run-agent.py" <<'EOF'
"""Start the agent as the unit does (user, groups, environment, umask, state directory, a
notify socket), wait for READY=1, ask `ansim agent status`, stop it with SIGTERM."""
import grp, os, pwd, shlex, signal, socket, subprocess, sys, time

unit = open("/etc/systemd/system/ansim-agent.service").read().splitlines()
get = lambda key: [l.split("=", 1)[1] for l in unit if l.startswith(key + "=")]
argv = shlex.split(get("ExecStart")[0])
user = pwd.getpwnam(get("User")[0])
group = grp.getgrnam(get("Group")[0]).gr_gid
extra = [grp.getgrnam(g).gr_gid for g in get("SupplementaryGroups")[0].split()]
env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": user.pw_dir,
       "USER": user.pw_name, "WATCHDOG_USEC": str(int(get("WatchdogSec")[0]) * 1000000)}
for assignment in get("Environment"):
    key, value = assignment.split("=", 1)
    env[key] = value
state = "/var/lib/" + get("StateDirectory")[0]  # what systemd makes for StateDirectory=
os.makedirs(state, exist_ok=True)
os.chown(state, user.pw_uid, group)
os.chmod(state, int(get("StateDirectoryMode")[0], 8))
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.bind("/run/ansim-check-notify")
os.chmod("/run/ansim-check-notify", 0o777)
env["NOTIFY_SOCKET"] = "/run/ansim-check-notify"
umask = int(get("UMask")[0], 8)
log = open("/tmp/agent.log", "w")
for port in (1883, 18883):  # both brokers accept connections before the agent starts
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("the broker on port %d did not come up within 10 s" % port)
            time.sleep(0.05)

def demote():
    os.setgroups(extra)
    os.setgid(group)
    os.setuid(user.pw_uid)
    os.umask(umask)

started = time.monotonic()
agent = subprocess.Popen(argv, env=env, preexec_fn=demote, stdout=log, stderr=subprocess.STDOUT, cwd="/")
env["NOTIFY_SOCKET"] = ""
notify.settimeout(1.0)
ready = None
messages = []
while time.monotonic() - started < 180 and agent.poll() is None:
    try:
        message = notify.recv(4096).decode()
    except socket.timeout:
        continue
    messages.append(message.replace("\n", " "))
    if "READY=1" in message.split("\n"):
        ready = time.monotonic() - started
        break
print("sd_notify received: %s" % (messages or "nothing"))
if ready is None:
    print("agent did not say READY=1 (exit status %s)" % agent.poll())
    agent.kill()
    print(open("/tmp/agent.log").read())
    sys.exit(1)
print("READY=1 after %.1f s (as the unit's user %s, groups %s)" % (ready, user.pw_name, get("SupplementaryGroups")[0]))
time.sleep(3)
status = subprocess.run(argv[:1] + ["agent", "status", "--config", argv[argv.index("--config") + 1]],
                        env=env, preexec_fn=demote, capture_output=True, text=True, timeout=120)
print("ansim agent status: exit %d" % status.returncode)
print("".join("  " + l + "\n" for l in (status.stdout + status.stderr).splitlines()), end="")
agent.send_signal(signal.SIGTERM)
try:
    code = agent.wait(timeout=60)
except subprocess.TimeoutExpired:
    agent.kill()
    code = "killed after 60 s"
print("agent stopped by SIGTERM: exit %s" % code)
log.close()
lines = open("/tmp/agent.log").read().splitlines()
print("agent's first log lines:")
print("".join("  " + l + "\n" for l in lines[:12]), end="")
running = any("running" in l for l in lines)
print("logged 'running': %s" % running)
sys.exit(0 if running and status.returncode in (0, 3) and code == 0 else 1)
EOF
say "starting the Pi's mosquitto, a center broker and the agent (private network namespace)"
rc=0
PATH=/usr/sbin:/usr/bin:/sbin:/bin unshare --net sh -c "
    ip link set lo up
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 chroot '$ROOT' sh -c '
        mkdir -p /run/mosquitto && chown mosquitto /run/mosquitto
        mosquitto -c /etc/mosquitto/mosquitto.conf -d || exit 10
        mosquitto -c /tmp/center.conf -d || exit 11
        python3 /tmp/run-agent.py
    '
" > "$WORK/agent-run.txt" 2>&1 || rc=$?
sed 's/^/    | /' "$WORK/agent-run.txt"
[ "$rc" -eq 0 ] || { tail -n 5 "$ROOT/var/log/mosquitto/mosquitto.log" 2>/dev/null | sed 's/^/    mosquitto | /'; die "the agent did not start and run from the unit's ExecStart (exit $rc)"; }
say "PASSED: install, systemd-analyze verify, agent started from the unit ($ARCH)"
