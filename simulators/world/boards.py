"""Scenario devices with ``board = true``: the real firmware on a virtual board.

Why: lightweight devices model what the agent sees; a few devices running the real firmware
(flashed as ``ansim flash`` lays it out, on the MicroPython VM) keep the scenario honest
about the devices' own behaviour (debounce, counters in flash, reconnection, their last
will). Bells and streetlights, on their agent's local broker; each board is a VM process.
"""

import json

from ansim_simulators.hardware.virtual_board import VirtualBoard
# the pins and the night schedule of the demo's boards (the firmware's defaults)
from ansim_tools.demo_story import BELL_BUTTON, LIGHT_PWM, SIREN, STROBE, TAMPER, night_now
from ansim_tools.flash import copy_to_directory, firmware_files

PRESS_MS = 150
BOOT_S = 30


class BoardDevice:
    """One bell or streetlight on a virtual board, flashed into ``directory``."""

    def __init__(self, spec, key, broker_port, directory, uid, login=(None, None)):
        self.spec, self.directory, self.uid = spec, directory, uid
        self.board_dir = directory / spec.hex_id
        copy_to_directory(firmware_files(spec.role), self.board_dir)
        config = {"device_id": spec.hex_id, "role": spec.role, "key": key.hex(), "utc_offset_min": 0,
                  "broker": {"host": "127.0.0.1", "port": broker_port}, "position": list(spec.position),
                  "heartbeat_s": int(spec.heartbeat_s)}
        if login[0]:
            config["broker"].update(username=login[0], password=login[1])
        if spec.role == "bell":
            config.update(button_pin=BELL_BUTTON, tamper_pin=TAMPER, siren_pin=SIREN, strobe_pin=STROBE)
        else:
            config.update(pwm_pin=LIGHT_PWM, schedule=night_now())
        (self.board_dir / "config.json").write_text(json.dumps(config))
        self.board = None
        self.powered = False

    def power_on(self):
        self.board = VirtualBoard(self.board_dir, "socket", uid=self.uid,
                                  workdir=self.directory / (self.spec.hex_id + "-vm"), start_timeout=BOOT_S)
        if self.spec.role == "bell":
            # installed with its lid shut: the tamper pin is low before the firmware first runs
            # (pins set on the control are replayed to every VM it starts), as the demo does
            main, later = self.board_dir / "main.py", self.board_dir / "main.later"
            main.rename(later)
            try:
                self.board.start()
                self.board.control.set_pin(TAMPER, 0)
            finally:
                later.rename(main)
            self.board.reset()
        else:
            self.board.start()
        self.powered = True

    def online(self, timeout=BOOT_S):
        """Wait until the firmware says it is online on its broker."""
        self.board.control.wait_for(lambda e: "online as" in e.get("text", ""), timeout=timeout, ev="print")

    def press(self):
        self.board.control.press(BELL_BUTTON, PRESS_MS)

    def heartbeat(self):
        pass  # the firmware sends its own

    def power_off(self):
        if self.board is not None:
            self.board.stop()
            self.board = None
        self.powered = False

    def wifi(self, up):
        self.board.control.wifi(up)

    def close(self):
        self.power_off()

    def console_tail(self, lines=6):
        if self.board is None:
            return ""
        text = "".join(e.get("text", "") for e in self.board.control.events() if e.get("ev") == "print")
        return "\n".join(text.strip().splitlines()[-lines:])
