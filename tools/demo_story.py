"""The story that ``ansim demo`` tells, end to end on this machine, with every part that exists.

A street is provisioned; the real firmware runs on virtual boards (the MicroPython VM, laid
out as ``ansim flash`` leaves a board): a child's wearable whose BLE radio is on a virtual air
where the real edge agent hears it through bleak, a street bell and two streetlights on the
Pi's mosquitto. The child presses SOS and a citizen presses the bell (button presses on the
boards' pins); the agent verifies and stores the alerts, makes the streetlights around the
spot blink (seen on the real lights' PWM) and alerts a simulated control center with the
location and the nearest cameras; forged frames are refused; the center's acks go back to
the devices (the wearable vibrates, the bell announces), it resolves (the lights go back) and
watches someone walk home (the lights ahead brighten). Every step is checked; the exit status
says whether the story held.
"""

import contextlib
import json
import os
import queue
import tempfile
import time
from pathlib import Path

from ansim_agent import config as config_module
from ansim_agent import geo, logs
from ansim_agent.service import Agent
from ansim_protocol import ble, frames, topics
from ansim_protocol.crypto import DeviceKeys, epoch_of
from ansim_simulators.hardware.ble_radio import ThreadedAir
from ansim_simulators.hardware.board_radio import BoardRadio
from ansim_simulators.fixtures.broker import MosquittoBroker, connect_client
from ansim_simulators.center.control_center import ControlCenter
from ansim_simulators.world.street import ORIGIN, Street, offset
from ansim_simulators.hardware.virtual_board import BoardError, VirtualBoard

from . import decode
from .flash import copy_to_directory, firmware_files

FIX = {"lat": round(ORIGIN[0] + 0.00005, 6), "lon": round(ORIGIN[1] + 0.0003, 6), "accuracy_m": 6}
HDOP = 1.2  # the wearable reports HDOP x 5 m: 6 m
CALLING = "긴급신고가 접수되었습니다. 경찰관을 연결 중입니다"
CONNECTED = "경찰관이 연결되었습니다"
WEARABLE_BUTTON, MOTOR, GNSS_UART = 0, 4, 2  # the wearable's default pins; its GNSS on UART 2
BELL_BUTTON, TAMPER, SIREN, STROBE = 0, 4, 25, 26
LIGHT_PWM = 5
NIGHT_PCT, BLINK_HIGH, BLINK_LOW, BRIGHTEN_PCT = 60, 100, 10, 100
ON_BOARDS = (1, 2)  # the streetlights at 20 m and 40 m run their firmware on virtual boards
RSSI = -67
WAIT_S = 20  # every wait; generous for a loaded machine, the steps take milliseconds


def say(text=""):
    print(text, flush=True)


class Failed(Exception):
    pass


def check(condition, what):
    if not condition:
        raise Failed(what)


def run(args):
    logs.setup("critical")  # the story prints what matters; the agent's own log stays quiet
    with tempfile.TemporaryDirectory(prefix="ansim-demo-") as workdir:
        try:
            Story(Path(workdir)).tell()
        except (Failed, BoardError) as err:
            say("\nTHE STORY DID NOT HOLD: %s" % err)
            return 1
    return 0


def duty(pct):
    return pct * 65535 // 100


def ms(seconds):
    return "%.0f ms" % (seconds * 1e3)


def gga(lat, lon, hdop):
    """A GNSS receiver's NMEA GGA sentence for this fix (what the wearable's UART hears)."""
    def dm(value, width):
        degrees = int(abs(value))
        return "%0*d%07.4f" % (width, degrees, (abs(value) - degrees) * 60)
    body = "GPGGA,%s,%s,%s,%s,%s,1,08,%.1f,38.0,M,18.0,M,," % (
        time.strftime("%H%M%S", time.gmtime()), dm(lat, 2), "N" if lat >= 0 else "S",
        dm(lon, 3), "E" if lon >= 0 else "W", hdop)
    checksum = 0
    for ch in body:
        checksum ^= ord(ch)
    return ("$%s*%02X\r\n" % (body, checksum)).encode()


def night_now():
    """A schedule (UTC, as the boards' clocks: utc_offset_min 0) whose night holds the present."""
    now = time.gmtime()
    minutes = now.tm_hour * 60 + now.tm_min
    at = lambda m: "%02d:%02d" % ((m % 1440) // 60, m % 60)  # noqa: E731
    return {"on": at(minutes - 120), "off": at(minutes + 120), "night_pct": NIGHT_PCT, "day_pct": 0}


class Device:
    """A device of the street with its firmware on a virtual board."""

    def __init__(self, sim, board):
        self.sim, self.board, self.ctl = sim, board, board.control

    @property
    def hex_id(self):
        return self.sim.hex_id

    def wait(self, what, timeout=WAIT_S, **match):
        """The first board event from ``since`` (a mark) matching, or the story fails saying ``what``."""
        try:
            return self.ctl.wait_for(timeout=timeout, **match)
        except TimeoutError:
            lines = self.prints().strip().splitlines()[-6:]
            raise Failed("%s %s: %s (nothing within %d s); its console's last lines:\n     %s"
                         % (self.sim.role, self.hex_id, what, timeout, "\n     ".join(lines)))

    def printed(self, text, since, what=None):
        return self.wait(what or "did not print %r" % text, since=since, ev="print",
                         predicate=lambda e: text in e.get("text", ""))

    def prints(self, since=0):
        return "".join(e.get("text", "") for e in self.ctl.events(since) if e.get("ev") == "print")


class Story:
    def __init__(self, workdir):
        self.workdir = workdir
        self.commands = queue.Queue()

    def tell(self):
        say("ansim demo: a child's SOS button, a street bell and the streetlights of one street")
        with contextlib.ExitStack() as stack:
            local = stack.enter_context(MosquittoBroker(workdir=self.workdir / "local"))
            center_broker = stack.enter_context(MosquittoBroker(workdir=self.workdir / "center"))
            air = ThreadedAir()
            stack.callback(air.close)
            self.street = Street(self.workdir / "street", center_port=center_broker.port,
                                 local_port=local.port,
                                 overrides={"ble": {"enabled": "true", "virtual_air": '"%s"' % air.spec},
                                            "agent": {"log_level": '"error"'}})
            say("1. Provisioned: %d wearables, %d bells, %d streetlights (every 20 m), %d CCTV "
                "cameras; keys in files readable only by the agent." % (
                    len(self.street.wearables), len(self.street.bells), len(self.street.lights),
                    len(self.street.cameras)))
            center = stack.enter_context(ControlCenter("127.0.0.1", center_broker.port))
            lights = connect_client("127.0.0.1", local.port, client_id="demo-lights")
            stack.callback(lights.close)
            lights.paho.on_message = lambda c, u, m: self.commands.put((m.topic, bytes(m.payload)))
            lights.subscribe(topics.topic(0, topics.DOWN).replace("00000000", "+"))
            agent = stack.enter_context(Agent(config_module.load(self.street.config_path), virtual_air=air))
            try:
                center.wait_for_agent(self.street.agent_id, timeout=WAIT_S)
            except TimeoutError:
                raise Failed("the agent's birth certificate did not reach the center")
            say("2. Edge agent %s is up: BLE (bleak over a virtual radio), the Pi's mosquitto, the "
                "control center (birth certificate seen)." % self.street.agent_id)
            self.boot_devices(stack, air, local.port)
            self.wearable_sos(center)
            self.attacks(air, agent, center)
            self.bell_press(local, center)
            self.resolve(center)
            self.walk_home(center)
            for device in [self.wearable, self.bell] + self.lights:
                check("Traceback" not in device.prints(), "the firmware of %s %s failed:\n%s"
                      % (device.sim.role, device.hex_id, device.prints()[-800:]))
        say("\nThe story held: every alert verified, stored, located, forwarded and acknowledged; "
            "the devices and the lights followed.")

    # -- the devices ----------------------------------------------------------------------
    def boot_devices(self, stack, air, broker_port):
        """Flash the wearable, the first bell and the lights at 20 m and 40 m as ``ansim flash``
        would, and power them on; returns once each runs its firmware."""
        broker = {"host": "127.0.0.1", "port": broker_port}
        started = time.monotonic()
        wearable, bell = self.street.wearables[0], self.street.bells[0]
        # The bell is installed with its lid shut: the firmware first runs with the tamper switch closed.
        bell_dir = self._flash("bell", bell, broker=broker, position=list(bell.position), button_pin=BELL_BUTTON,
                               tamper_pin=TAMPER, siren_pin=SIREN, strobe_pin=STROBE, heartbeat_s=10)
        (bell_dir / "main.py").rename(bell_dir / "main.later")
        board = self._board(stack, bell_dir, "240ac4000021")
        board.control.set_pin(TAMPER, 0)  # replayed to every new VM before boot.py
        (bell_dir / "main.later").rename(bell_dir / "main.py")
        board.reset()
        self.bell = Device(bell, board)
        board = self._board(stack, self._flash("wearable", wearable, gnss={"uart": GNSS_UART}), "240ac4000011")
        self.radio = stack.enter_context(BoardRadio(board, air, rssi=RSSI))
        self.wearable = Device(wearable, board)
        self.lights = []
        for n in ON_BOARDS:
            light = self.street.lights[n]
            light_dir = self._flash("streetlight", light, broker=broker, position=list(light.position),
                                    pwm_pin=LIGHT_PWM, schedule=night_now(), heartbeat_s=10)
            self.lights.append(Device(light, self._board(stack, light_dir, "240ac40000%02x" % (0x31 + n))))
        self.wearable.printed("wearable: ready", 0)
        self.bell.printed("bell: online as", 0)
        for light in self.lights:
            light.printed("light: online as", 0)
            light.wait("is not at its night level", since=0, ev="pwm", pin=LIGHT_PWM, duty_u16=duty(NIGHT_PCT))
        say("3. The real firmware runs on %d virtual boards (the MicroPython VM, flashed as `ansim flash` "
            "does), all up %s after power-on:" % (2 + len(self.lights), ms(time.monotonic() - started)))
        say("   wearable %s (its BLE radio on the virtual air), bell %s (lid shut) and streetlights %s on "
            "the Pi's mosquitto; the lights burn at their night level, PWM %d%%."
            % (wearable.hex_id, bell.hex_id, " and ".join(l.hex_id for l in self.lights), NIGHT_PCT))

    def _flash(self, role, sim, **settings):
        board_dir = self.workdir / "boards" / sim.hex_id
        copy_to_directory(firmware_files(role), board_dir)
        (board_dir / "config.json").write_text(json.dumps(dict(
            {"device_id": sim.hex_id, "role": role, "key": sim.key.hex(), "utc_offset_min": 0}, **settings)))
        return board_dir

    def _board(self, stack, board_dir, uid):
        board = VirtualBoard(board_dir, "socket", uid=uid, workdir=board_dir.parent / (board_dir.name + "-vm"),
                             start_timeout=WAIT_S)
        return stack.enter_context(board)

    def lights_blink(self, marks):
        """The lights on boards flash 100 % / 10 % / 100 % (events from ``marks``, one per light);
        the first flash of each."""
        first = []
        for light, since in zip(self.lights, marks):
            high = light.wait("did not blink", since=since, ev="pwm", pin=LIGHT_PWM, duty_u16=duty(BLINK_HIGH))
            low = light.wait("did not blink", since=since, ev="pwm", pin=LIGHT_PWM, duty_u16=duty(BLINK_LOW),
                             predicate=lambda e: e["t"] > high["t"])
            light.wait("did not blink", since=since, ev="pwm", pin=LIGHT_PWM, duty_u16=duty(BLINK_HIGH),
                       predicate=lambda e: e["t"] > low["t"])
            first.append(high["t"])
        return first

    def lights_at(self, pct, marks, what):
        """When each light on a board went to ``pct`` (events from ``marks``, one per light)."""
        return [light.wait(what, since=since, ev="pwm", pin=LIGHT_PWM, duty_u16=duty(pct))["t"]
                for light, since in zip(self.lights, marks)]

    def light_commands(self, wanted):
        """The next ``light_command`` frames to streetlights, decoded with each light's key:
        ``wanted`` {action: count}, in any order between them. Returns {action: [light ids]}."""
        seen = {action: [] for action in wanted}
        deadline = time.monotonic() + WAIT_S
        while any(len(seen[action]) < n for action, n in wanted.items()):
            try:
                topic, payload = self.commands.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise Failed("expected %s commands to streetlights, saw %s"
                             % (wanted, {action: len(got) for action, got in seen.items()}))
            light = next((l for l in self.street.lights if topics.topic(l.device_id, topics.DOWN) == topic), None)
            if light is None:
                continue
            command = frames.unpack(payload, DeviceKeys(light.key))
            if command.kind != "light_command":
                continue  # the time frame a light gets when it comes online
            got = command.fields["action"]
            check(got in wanted and len(seen[got]) < wanted[got],
                  "light %s got %s, expected %s" % (light.hex_id, got, wanted))
            seen[got].append(light.hex_id)
        return seen

    # -- the story ------------------------------------------------------------------------
    def wearable_sos(self, center):
        wearable, ctl = self.wearable, self.wearable.ctl
        keys = DeviceKeys(wearable.sim.key)
        ctl.uart(GNSS_UART, gga(FIX["lat"], FIX["lon"], HDOP))  # its GNSS receiver has a fix
        mark, light_marks = ctl.mark(), [light.ctl.mark() for light in self.lights]
        for n in range(3):
            if n == 2:
                pressed, pressed_wall = time.monotonic(), time.time()
            ctl.press(WEARABLE_BUTTON, 60)  # the child's presses: 60 ms each, 60 ms apart
            time.sleep(0.06)
        first = wearable.wait("sent no SOS advertisement", since=mark, ev="adv",
                              predicate=lambda e: e["data"] is not None)
        advertisement = bytes.fromhex(first["data"])
        sos = frames.unpack(ble.frame_from_advertisement(advertisement), keys)
        check(sos.kind == "sos", "the wearable advertised %s, not an SOS" % sos.kind)
        alert_id = "%s-%d" % (wearable.hex_id, sos.counter)
        try:
            record = center.wait_for_alert(alert_id, WAIT_S)
        except TimeoutError:
            raise Failed("the SOS %s did not reach the center" % alert_id)
        alert, loc = record.body, record.body["location"]
        check(loc["source"] == "gnss", "the SOS was not located by its GNSS fix")
        check(alert["path"]["transport"] == "ble", "the SOS did not come over BLE")
        say("4. The child presses SOS (three presses): first advertisement after %s, the control center has "
            "the alert %s after the press:" % (ms(first["t"] - pressed), ms(record.first_seen - pressed_wall)))
        say("   %s from %s, at %.6f, %.6f within %d m (%s), heard at %d dBm"
            % (alert["type"].upper(), alert["device"]["name"], loc["lat"], loc["lon"], loc["accuracy_m"],
               loc["source"], alert["path"]["rssi"]))
        say("   nearest CCTV: " + ", ".join("%s (%.0f m)" % (c["id"], c["distance_m"]) for c in alert["cameras"]))
        blinking = self.light_commands({"blink": 4})["blink"]
        say("   streetlights within 50 m blink: %s" % ", ".join(sorted(blinking)))
        check(all(light.hex_id in blinking for light in self.lights), "a light near the child did not blink")
        flashes = self.lights_blink(light_marks)
        spot = (loc["lat"], loc["lon"])
        say("   on the street, %s flash %d%% / %d%% every 250 ms; the first flash %s after the press"
            % (" and ".join("%s (%.0f m away)" % (l.hex_id, geo.distance_m(spot, l.sim.position))
                            for l in self.lights), BLINK_HIGH, BLINK_LOW, ms(min(flashes) - pressed)))
        passive = decode.decode(advertisement, None)
        say("   a passive scanner nearby sees the rotating id %s and, from the re-sends and the agent's ack, that"
            " someone is calling for help: no identity, no position, nothing the frame says (SPEC.md 3.3)."
            % passive["rid"])

        mark = ctl.mark()
        acked = time.monotonic()
        center.ack(alert_id, "dispatched")
        done = wearable.printed("wearable: sos %d acknowledged" % sos.counter, mark,
                                "did not hear the center's ack over BLE")
        wearable.wait("kept advertising after the ack", since=mark, ev="adv", predicate=lambda e: e["data"] is None)
        since = mark
        for _ in range(3):  # three buzzes: acknowledged
            buzz = wearable.wait("did not vibrate three times", since=since, ev="pin", pin=MOTOR, value=1)
            since = ctl.events().index(buzz) + 1
        say("   The center dispatches the police; its ack goes back over the air and the wearable vibrates: "
            "acknowledged, %s after the center's ack (three buzzes); it stops advertising." % ms(done["t"] - acked))
        self.sos_id = alert_id

    def attacks(self, air, agent, center):
        forged = frames.build_sealed("sos", FIX, DeviceKeys(os.urandom(16)), 1, epoch_of(time.time()))
        bell = self.street.bells[1]
        press = frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bell.key), bell.device_id, 5)
        agent.intake.put(_reception(press[:-1] + bytes([press[-1] ^ 1])))  # one bit changed on a serial line
        advertiser = air.call(air.air.add_advertiser(ble.advertisement(forged), interval_ms=50))
        try:
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline and not (_count(agent, "unknown") and _count(agent, "tag")):
                time.sleep(0.02)  # polls the agent's metrics
        finally:
            air.call(advertiser.stop())
        check(_count(agent, "unknown") and _count(agent, "tag"), "forged frames were not refused")
        check(center.alert_ids == [self.sos_id], "a forgery reached the center: %s" % center.alert_ids)
        say("5. Forgeries are refused: an SOS advertised under an unknown key ('unknown') and a bell "
            "frame with one bit changed on a serial line ('tag'); nothing reaches the center.")

    def bell_press(self, local, center):
        bell, ctl = self.bell, self.bell.ctl
        keys = DeviceKeys(bell.sim.key)
        uplink = connect_client("127.0.0.1", local.port, client_id="demo-bell-uplink")
        try:
            uplink.subscribe(topics.topic(bell.sim.device_id, topics.UP))
            mark, light_marks = ctl.mark(), [light.ctl.mark() for light in self.lights]
            pressed, pressed_wall = time.monotonic(), time.time()
            ctl.press(BELL_BUTTON, 150)  # a citizen holds the button 150 ms
            deadline = time.monotonic() + WAIT_S
            while True:
                try:
                    msg = uplink.next_message(max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    raise Failed("the bell's press did not reach the Pi's mosquitto")
                frame = frames.unpack(msg.payload, keys)
                if frame.kind == "bell_press":
                    break
        finally:
            uplink.close()
        alert_id = "%s-%d" % (bell.hex_id, frame.counter)
        try:
            record = center.wait_for_alert(alert_id, WAIT_S)
        except TimeoutError:
            raise Failed("the bell press %s did not reach the center" % alert_id)
        alert = record.body
        check(alert["location"]["source"] == "registered", "the bell was not located at its registered position")
        bell.wait("did not sound its siren", since=mark, ev="pin", pin=SIREN, value=1)
        bell.wait("did not start its strobe", since=mark, ev="pin", pin=STROBE, value=1)
        bell.printed("ANNOUNCE: " + CALLING, mark)
        say("6. A citizen presses street bell %s: the press is on the Pi's mosquitto after %s, the center has "
            "the alert %s after the press, at the bell's registered position, cameras %s."
            % (bell.hex_id, ms(msg.timestamp - pressed), ms(record.first_seen - pressed_wall),
               ", ".join(c["id"] for c in alert["cameras"][:2])))
        say("   The siren and the strobe come on; the bell announces: \"%s\"" % CALLING)
        blinking = self.light_commands({"blink": 4})["blink"]
        for light, since in zip(self.lights, light_marks):
            told = light.printed(" blink ", since, "did not get the bell's blink command")
            light.wait("stopped flashing", since=since, ev="pwm", pin=LIGHT_PWM, duty_u16=duty(BLINK_LOW),
                       predicate=lambda e: e["t"] > told["t"])
        say("   The lights around the bell are told to blink (%s); %s confirm the command and keep flashing."
            % (", ".join(sorted(blinking)), " and ".join(l.hex_id for l in self.lights)))
        mark = ctl.mark()
        acked = time.monotonic()
        center.ack(alert_id, "received")
        confirmed = bell.printed("ANNOUNCE: " + CONNECTED, mark, "did not announce the center's ack")
        bell.wait("did not silence its siren", since=mark, ev="pin", pin=SIREN, value=0)
        say("   The center acknowledges: %s later the bell announces \"%s\" and silences its siren."
            % (ms(confirmed["t"] - acked), CONNECTED))
        self.bell_id = alert_id

    def resolve(self, center):
        marks = [light.ctl.mark() for light in self.lights]
        bell_mark = self.bell.ctl.mark()
        resolved = time.monotonic()
        center.ack(self.sos_id, "resolved")
        center.ack(self.bell_id, "resolved")
        # both alerts blink the same four lights: they go back once the second is resolved
        restored = self.light_commands({"restore": 4})["restore"]
        back = self.lights_at(NIGHT_PCT, marks, "did not return to its schedule")
        self.bell.wait("kept its strobe on", since=bell_mark, ev="pin", pin=STROBE, value=0)
        self.bell.printed("bell: alarm over (resolved)", bell_mark)
        say("7. Police reach the child and the bell; the center resolves both: the bell's strobe goes off and "
            "the %d lights return to their schedule; %s are back at %d%% %s after."
            % (len(set(restored)), " and ".join(l.hex_id for l in self.lights), NIGHT_PCT,
               ms(max(back) - resolved)))

    def walk_home(self, center):
        route = [list(ORIGIN), list(offset(ORIGIN, 180))]
        agent_id = self.street.agent_id
        marks = [light.ctl.mark() for light in self.lights]
        sent = time.monotonic()
        center.monitor(agent_id, {"session": "walk-1", "action": "start", "route": route})
        ahead = self.light_commands({"brighten": 6})["brighten"]
        bright = self.lights_at(BRIGHTEN_PCT, marks, "did not brighten")
        say("8. Walk-home monitoring: the center sends the route home; the 6 lights of the next "
            "100 m brighten: %s (%s at %d%% %s after)"
            % (", ".join(sorted(ahead)), " and ".join(l.hex_id for l in self.lights), BRIGHTEN_PCT,
               ms(max(bright) - sent)))
        marks = [light.ctl.mark() for light in self.lights]
        center.monitor(agent_id, {"session": "walk-1", "action": "update", "position": list(offset(ORIGIN, 80, 2))})
        behind = self.light_commands({"restore": 4, "brighten": 4})["restore"]
        check(all(light.hex_id in behind for light in self.lights), "the lights behind the walker did not go back")
        self.lights_at(NIGHT_PCT, marks, "did not go back behind the walker")
        say("   80 m on: the %d lights behind go back (%s at %d%% again), 4 more ahead brighten."
            % (len(behind), " and ".join(l.hex_id for l in self.lights), NIGHT_PCT))
        center.monitor(agent_id, {"session": "walk-1", "action": "arrived"})
        done = self.light_commands({"restore": 6})["restore"]
        say("   Home: the last %d lights return to their schedule." % len(done))


def _reception(frame):
    from ansim_agent.intake import Reception
    return Reception(frame, "serial", "demo-line")


def _count(agent, verdict):
    return agent.metrics.frames_by_verdict().get(verdict, 0)
