"""Scenario devices with ``board = true``: the real firmware on a virtual board.

Why: lightweight devices model what the agent sees; a few devices running the real firmware
(flashed as ``ansim flash`` lays it out, on the MicroPython VM) keep the scenario honest
about the devices' own behaviour (debounce, counters in flash, reconnection, their last
will, a wearable's gestures, re-sends, sleep and clock). Each board is a VM process. Bells and
streetlights run on their agent's local broker; a wearable's BLE radio is on the scenario's
virtual air (``BoardRadio``), each of its advertisers placed at the wearable's position for
the air's path-loss model, and everything it does is driven through its button, as a wearer
would, never by calling Python.
"""

import json
import queue
import re
import threading
import time

from ansim_simulators.hardware.board_radio import BoardRadio
from ansim_simulators.hardware.virtual_board import BoardError, VirtualBoard
# the pins and the night schedule of the demo's boards (the firmware's defaults), its GNSS sentences
from ansim_tools.demo_story import BELL_BUTTON, GNSS_UART, LIGHT_PWM, SIREN, STROBE, TAMPER, WEARABLE_BUTTON, \
    gga, night_now
from ansim_tools.flash import copy_to_directory, firmware_files

PRESS_MS = 150
BOOT_S = 30
TAP_MS = 60          # a wearable's triple press: 60 ms presses, 60 ms apart
HOLD_MAX_S = 5.0     # a wearer holds a long press until it buzzes, giving up after this
GNSS_PERIOD_S = 1.0  # a GNSS receiver sends a fix every second
GNSS_HDOP = 1.6      # the firmware reports HDOP x 5 m: 8 m, as a lightweight wearable's fix
SENT = re.compile(r"wearable: (sos|test_sos|cancel) (\d+) (sent|again)")
ACK = re.compile(r"wearable: ack for (\d+): (\S+)")


class Board:
    """What the boards share: flashed into ``directory``/<id> with ``config.json``, powered on
    and off; ``powered`` False while off."""

    def __init__(self, spec, key, directory, uid, settings):
        self.spec, self.directory, self.uid = spec, directory, uid
        self.board_dir = directory / spec.hex_id
        copy_to_directory(firmware_files(spec.role), self.board_dir)
        config = {"device_id": spec.hex_id, "role": spec.role, "key": key.hex(), "utc_offset_min": 0}
        (self.board_dir / "config.json").write_text(json.dumps(dict(config, **settings)))
        self.board = None
        self.powered = False

    def _board(self, clock="host"):
        return VirtualBoard(self.board_dir, "socket", uid=self.uid, workdir=self.directory / (self.spec.hex_id + "-vm"),
                            start_timeout=BOOT_S, clock=clock)

    def _printed(self, text, since=0, timeout=BOOT_S):
        self.board.control.wait_for(lambda e: text in e.get("text", ""), timeout=timeout, since=since, ev="print")

    def power_off(self):
        if self.board is not None:
            self.board.stop()
            self.board = None
        self.powered = False

    def close(self):
        self.power_off()

    def console_tail(self, lines=6):
        if self.board is None:
            return ""
        text = "".join(e.get("text", "") for e in self.board.control.events() if e.get("ev") == "print")
        return "\n".join(text.strip().splitlines()[-lines:])


class BoardDevice(Board):
    """One bell or streetlight on a virtual board, on its agent's broker at ``broker_port``."""

    def __init__(self, spec, key, broker_port, directory, uid, login=(None, None)):
        settings = {"broker": {"host": "127.0.0.1", "port": broker_port}, "position": list(spec.position),
                    "heartbeat_s": int(spec.heartbeat_s)}
        if login[0]:
            settings["broker"].update(username=login[0], password=login[1])
        if spec.role == "bell":
            settings.update(button_pin=BELL_BUTTON, tamper_pin=TAMPER, siren_pin=SIREN, strobe_pin=STROBE)
        else:
            settings.update(pwm_pin=LIGHT_PWM, schedule=night_now())
        super().__init__(spec, key, directory, uid, settings)

    def power_on(self):
        self.board = self._board()
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
        self._printed("online as", timeout=timeout)

    def press(self):
        self.board.control.press(BELL_BUTTON, PRESS_MS)

    def heartbeat(self):
        pass  # the firmware sends its own

    def wifi(self, up):
        self.board.control.wifi(up)


class WearableBoard(Board):
    """A wearable's firmware on a virtual board, its radio on the scenario's ``air``.

    ``position`` is where it is (a walk moves it): each advertiser of its radio is handed to
    ``on_air(advertiser, self)`` before it first sends, so the air's RSSI model places it
    there. With ``spec.fix`` its GNSS receiver (UART 2) sends a fix there every second while
    the board runs. ``on_sent(name, alert_id, position)`` and ``on_ack(name, status)`` are
    called (on the board's reader thread) as the firmware prints that it sent an SOS or test
    SOS and that it heard a center_ack.

    Gestures (``press``) run in order on a thread of their own, so that the scenario's
    timeline goes on meanwhile: ``sos`` and ``cancel`` are long presses, held until the
    firmware sends (as a wearer holds until it buzzes; a press that wakes it from deep sleep
    too); ``triple`` is three 60 ms presses (after the first, it waits for a wearable in deep
    sleep to wake); ``test`` holds the button through a reset (test mode), then long-presses;
    the next other gesture resets it again without the button, out of test mode. A power
    loss stops the VM; back, it boots with its RTC lost (clockless until the agent's time
    frame), as a wearable whose battery was out.
    """

    def __init__(self, spec, key, directory, uid, air, on_air, on_sent, on_ack):
        settings = {"gnss": {"uart": GNSS_UART}} if spec.fix else {}
        super().__init__(spec, key, directory, uid, settings)
        self.air, self.on_air, self.on_sent, self.on_ack = air, on_air, on_sent, on_ack
        self.position = spec.position
        self.radio = None
        self.test_mode = False
        self._line = ""
        self._gestures = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="wearable-%s" % spec.hex_id, daemon=True)
        self._worker.start()
        self._gnss_stop = threading.Event()
        self._gnss = None
        self._clock = "host"  # as ansim flash sets it

    def power_on(self):
        self.board = self._board(self._clock)
        self._line = ""
        self.board.start()
        self.board.control.listeners.append(self._noted)  # nothing sent before a gesture: none missed
        self.radio = BoardRadio(self.board, self.air, on_advertiser=lambda a: self.on_air(a, self)).start()
        self.test_mode = False
        self.powered = True
        if self.spec.fix:
            self._gnss_stop.clear()
            self._gnss = threading.Thread(target=self._send_fixes, args=(self.board,), daemon=True)
            self._gnss.start()

    def online(self, timeout=BOOT_S):
        """Wait until the firmware says it is ready."""
        self._printed("wearable: ready", timeout=timeout)

    def power_off(self):
        self.powered = False
        self._gnss_stop.set()
        if self._gnss is not None:
            self._gnss.join(5)
            self._gnss = None
        if self.radio is not None:
            self.radio.stop()
            self.radio = None
        super().power_off()
        self._clock = None  # its RTC lost power

    def close(self):
        self._gestures.put(None)
        self.power_off()  # a gesture under way ends with it
        self._worker.join(5)

    def press(self, button):
        self._gestures.put(button)

    # -- the wearer -----------------------------------------------------------------------
    def _work(self):
        while True:
            button = self._gestures.get()
            if button is None:
                return
            try:
                self._gesture(button)
            except (BoardError, TimeoutError, OSError, AttributeError) as err:  # AttributeError: powered off
                print("           (%s's %s press: %s)" % (self.spec.name, button, err), flush=True)

    def _gesture(self, button):
        ctl = self.board.control
        if (button == "test") != self.test_mode:
            mark = ctl.mark()
            if button == "test":
                ctl.set_pin(WEARABLE_BUTTON, 0)  # held through the start: test mode
            self.board.reset()
            self._printed("wearable: ready in test mode" if button == "test" else "wearable: ready", mark)
            ctl.set_pin(WEARABLE_BUTTON, 1)
            self.test_mode = button == "test"
            time.sleep(0.1)  # released a moment (the firmware re-arms after 50 ms)
        if button == "triple":
            asleep = self._asleep()
            mark = ctl.mark()
            for n in range(3):
                ctl.press(WEARABLE_BUTTON, TAP_MS)
                if n == 0 and asleep:
                    self._printed("wearable: awake", mark)
                time.sleep(TAP_MS / 1000)
            return
        mark = ctl.mark()
        ctl.set_pin(WEARABLE_BUTTON, 0)
        try:
            ctl.wait_for(lambda e: SENT.search(e.get("text", "")), timeout=HOLD_MAX_S, since=mark, ev="print")
        except TimeoutError:
            pass  # nothing buzzed: the wearer lets go (the run shows what did not happen)
        finally:
            ctl.set_pin(WEARABLE_BUTTON, 1)

    def _asleep(self):
        """In deep sleep: the board's last sleep or wake was a deep sleep."""
        for e in reversed(self.board.control.events()):
            if e.get("ev") in ("sleep", "wake") and e.get("mode") != "light":
                return e.get("ev") == "sleep"
        return False

    def _send_fixes(self, board):
        while True:
            try:
                board.control.uart(GNSS_UART, gga(self.position[0], self.position[1], GNSS_HDOP))
            except BoardError:
                pass  # asleep or rebooting: no VM reads its UART
            if self._gnss_stop.wait(GNSS_PERIOD_S):
                return

    def _noted(self, event):
        """Each board event, on its reader thread: the firmware's lines about what it sent and
        what acks it heard."""
        if event.get("ev") != "print":
            return
        self._line += event.get("text", "")
        *lines, self._line = self._line.split("\n")
        for line in lines:
            sent, ack = SENT.search(line), ACK.search(line)
            if sent and sent.group(1) != "cancel" and sent.group(3) == "sent":
                self.on_sent(self.spec.name, "%s-%s" % (self.spec.hex_id, sent.group(2)), self.position)
            elif ack:
                self.on_ack(self.spec.name, ack.group(2))
