"""``ansim freeze``: the device code as a MicroPython manifest, to build a firmware image with
it frozen in (``make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=<out>/manifest.py``).

Why: frozen modules run from flash; modules copied as files (``ansim flash``) are loaded
into the heap, which is most of what the firmware uses (``ansim bench firmware``). A board
running such an image is flashed with ``ansim flash --frozen``: only main.py and config.json.

A manifest cannot rename a directory, and the protocol lives in protocol/ but is imported as
``ansim_protocol``, so the modules are staged under ``<out>/modules`` first.
"""

import pathlib
import shutil

from .flash import FIRMWARE_DIR, PROTOCOL_DIR, ROLES

PORT_MANIFEST = "$(PORT_DIR)/boards/manifest.py"  # the port's own frozen modules (asyncio, ...)


def add_parser(subparsers):
    p = subparsers.add_parser("freeze", help="stage the device code and a manifest to freeze it into a firmware image",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for manifest.py and the staged modules")
    p.add_argument("--include", default=PORT_MANIFEST,
                   help="manifest to include first (default: the port's own, %s)" % PORT_MANIFEST)
    p.set_defaults(run=run)


def run(args):
    manifest = stage(pathlib.Path(args.out), args.include)
    print("staged the device code for freezing: %s" % manifest)
    print("build an image with it, e.g.: make -C <micropython>/ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=%s"
          % manifest.resolve())
    print("then flash boards running that image with: ansim flash --frozen ...")
    return 0


def stage(out, include=PORT_MANIFEST, firmware=FIRMWARE_DIR):
    """Copy the role modules, ansim_device and the protocol (as ansim_protocol) under
    ``out/modules`` and write ``out/manifest.py``; returns the manifest's path."""
    modules = out / "modules"
    if modules.exists():
        shutil.rmtree(modules)
    shutil.copytree(firmware / "ansim_device", modules / "ansim_device", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROTOCOL_DIR, modules / "ansim_protocol", ignore=shutil.ignore_patterns("__pycache__", "*.md",
                                                                                                   "*.json"))
    for role in ROLES:
        shutil.copyfile(firmware / ("%s.py" % role), modules / ("%s.py" % role))
    lines = ["# Made by `ansim freeze`: the ansim device code, frozen into a MicroPython image.",
             'include("%s")' % include if include else "",
             'package("ansim_device", base_path="modules")',
             'package("ansim_protocol", base_path="modules")']
    lines += ['module("%s.py", base_path="modules")' % role for role in ROLES]
    manifest = out / "manifest.py"
    manifest.write_text("\n".join(line for line in lines if line) + "\n")
    return manifest

