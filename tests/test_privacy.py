"""What a passive scanner learns from a wearable (SPEC.md 3.3, issue 10 item 3).

A scanner on the virtual BLE radio records every advert a wearable (the real firmware on a
virtual board) sends through a short life: heartbeats, a low battery, an SOS and its cancel,
an SOS nobody acknowledges, a test SOS. Adverts are grouped into transmissions as a scanner
would group them (same address, same bytes); only the test labels them, by decrypting with
the device key. A classifier that sees what the air shows of a transmission's first 3 s
(length, AD structures, header byte, address type, interval, duration) cannot tell one type
from another: every feature is the same. What SPEC.md says stays distinguishable does: an SOS
goes on after its opening, the others stop. Heartbeat waits are drawn by the firmware on the
MicroPython VM, 0.5 to 1.5 times ``heartbeat_s``. A simulated day (the virtual board's time
warp) shows the same from the controller's side with the real 6 h heartbeats.
"""

import json
import statistics
import time

import pytest
from bumble.device import Device

from ansim_protocol import ble, frames
from ansim_protocol.crypto import DeviceKeys
from ansim_simulators.hardware.ble_radio import ThreadedAir
from ansim_simulators.fixtures import waits
from ansim_simulators.hardware.board_radio import BoardRadio
from ansim_simulators.hardware.virtual_board import VirtualBoard
from ansim_tools.flash import copy_to_directory, firmware_files

BUTTON, BATTERY = 0, 35
KEY = bytes(range(16))
KEYS = DeviceKeys(KEY)
WAIT_S = 15
OPENING_S = 3.0
# adverts further apart than this are two segments of a transmission: well below the 3 s an SOS
# stays off the air between its opening and its re-send, well above the 30 ms interval, so that
# a stall of the host (the virtual air runs on a shared, loaded machine) does not cut an opening
GAP_S = 1.5
FULL_U16, LOW_U16 = 3900 * 65535 // 2 // 3300, 3400 * 65535 // 2 // 3300  # 3.9 V, 3.4 V behind 1:2
RESEND_EVERY_S = 4  # the SOS comes back sooner than the default 10 s, to keep the test short
ROUTINE = {"heartbeat_s": 4, "battery_pin": BATTERY}  # heartbeats 2 to 6 s apart
EMERGENCY = {"heartbeat_s": 3600, "resend_every_s": RESEND_EVERY_S, "sos_timeout_s": 8}  # one re-send, at 6-7 s


class Scanner:
    """A passive scanner on ``air``: every advert heard, with its time, address and bytes."""

    def __init__(self, air):
        self.air = air
        self.heard = []
        self._device = air.call(self._start())

    async def _start(self):
        device = await self.air.air.open_scanner()
        device.on(Device.EVENT_ADVERTISEMENT, self._on_advert)
        await device.start_scanning(active=False, scan_interval=60, scan_window=60, filter_duplicates=False)
        return device

    def _on_advert(self, advert):
        if advert.is_scan_response:  # bumble's fake one (see ble_radio): these beacons are not scannable
            return
        self.heard.append({"t": time.monotonic(), "addr": advert.address.to_string(False),
                           "addr_type": int(advert.address.address_type), "data": bytes(advert.data),
                           "connectable": advert.is_connectable, "scannable": advert.is_scannable})

    def close(self):
        async def stop():
            await self._device.stop_scanning()
            self.air.air.close_scanner(self._device)
        self.air.call(stop())


def transmissions(heard):
    """Adverts grouped as a scanner can: one transmission per (address, bytes), split into
    segments where the air was silent longer than GAP_S."""
    grouped = {}
    for advert in heard:
        grouped.setdefault((advert["addr"], advert["data"]), []).append(advert)
    out = []
    for adverts in grouped.values():
        segments = [[adverts[0]]]
        for a, b in zip(adverts, adverts[1:]):
            if b["t"] - a["t"] > GAP_S:
                segments.append([])
            segments[-1].append(b)
        out.append(segments)
    return sorted(out, key=lambda segments: segments[0][0]["t"])


def opening(segments):
    """What the air shows of a transmission's first 3 s: the classifier's features."""
    first = segments[0]
    data = first[0]["data"]
    gaps = [b["t"] - a["t"] for a, b in zip(first, first[1:])]
    assert gaps, "an opening of one advert (%s): the air stalled longer than GAP_S" % data.hex()
    return {
        "length": len(data),
        "ad_structures": tuple((t, len(d)) for t, d in ble.ad_structures(data)),
        "company_id": ble.ad_structures(data)[-1][1][:2].hex(),
        "header": data[7],
        "addr_type": first[0]["addr_type"],
        "addr_top_bits": int(first[0]["addr"][:2], 16) >> 6,  # 0: non-resolvable private
        "connectable": first[0]["connectable"],  # as bumble's virtual air reports it
        "scannable": first[0]["scannable"],
        "interval_ms": round(statistics.median(gaps) * 1000 / 10) * 10,
        "duration_s": round(first[-1]["t"] - first[0]["t"], 1),
    }


def cut_by_reset(events):
    """The advertising data (hex) of transmissions that a reboot cut short: a heartbeat due just
    as the test resets the board to load another config goes on the air for an advert or two."""
    cut, on_air = set(), None
    for e in events:
        if e.get("ev") == "adv":
            on_air = e["data"]
        elif e.get("ev") in ("vm_exit", "hello"):
            if on_air is not None:
                cut.add(on_air)
            on_air = None
    return cut


def truth(segments):
    """The frame, which only the key holder can read: the test's labels."""
    return frames.unpack(ble.frame_from_advertisement(segments[0][0]["data"]), KEYS)


def printed(board, text, since=0, timeout=WAIT_S):
    return board.control.wait_for(lambda e: text in e.get("text", ""), timeout=timeout, since=since, ev="print")


def stopped(board, since, timeout=WAIT_S):
    return board.control.wait_for(lambda e: e["data"] is None, timeout=timeout, since=since, ev="adv")


class Wearable:
    """The wearable firmware on a virtual board whose radio is on ``air``; ``boot(settings)``
    flashes a config (the same device and key) and restarts it."""

    def __init__(self, tmp_path, air):
        self.dir = tmp_path / "flash"
        copy_to_directory(firmware_files("wearable"), self.dir)
        self.write_config({})
        self.board = VirtualBoard(self.dir, "socket", workdir=tmp_path / "vm").start()
        self.ctl = self.board.control
        self.radio = BoardRadio(self.board, air)
        self.radio.start()

    def write_config(self, settings):
        config = {"device_id": "00010001", "role": "wearable", "key": KEY.hex(), "heartbeat_s": 3600}
        config.update(settings)
        (self.dir / "config.json").write_text(json.dumps(config))

    def boot(self, settings):
        self.write_config(settings)
        mark = self.ctl.mark()
        self.board.reset()
        self.ready = printed(self.board, "wearable: ready", mark)
        return mark

    def close(self):
        self.radio.stop()
        self.board.stop()


def done(board, text, count, since):
    """Wait until ``count`` transmissions whose line starts ``text`` are over."""
    board.control.wait_for(lambda e: len([x for x in board.control.events(since) if x.get("ev") == "print"
                                          and x["text"].startswith(text) and " done" in x["text"]]) >= count,
                           timeout=WAIT_S * count, since=since)


def triple_press(ctl):
    for _ in range(3):
        ctl.press(BUTTON, 60)
        time.sleep(0.06)


def live_a_little(wearable):
    """Heartbeats, a low battery, an SOS cancelled, an SOS and a test SOS left unacknowledged.
    Returns the host time of each boot's "ready"."""
    board, ctl = wearable.board, wearable.ctl
    ctl.set_adc(BATTERY, FULL_U16)
    mark = wearable.boot(ROUTINE)
    ready = [wearable.ready["t"]]
    done(board, "wearable: heartbeat", 1, mark)
    ctl.set_adc(BATTERY, LOW_U16)
    done(board, "wearable: low_battery", 1, mark)
    done(board, "wearable: heartbeat", 3, ctl.mark())  # then heartbeats alone, one after the other

    mark = wearable.boot(EMERGENCY)
    ctl.press(BUTTON, 1200)  # SOS
    stopped(board, ctl.events().index(printed(board, "wearable: sos", mark)))  # its opening is over (3 s)
    ctl.press(BUTTON, 1200)  # within 5 s of the SOS: cancel
    done(board, "wearable: cancel", 1, mark)
    mark = ctl.mark()
    triple_press(ctl)  # another SOS, left unacknowledged
    printed(board, "not acknowledged in time", mark)

    mark = wearable.boot(dict(EMERGENCY, test_mode=True))
    triple_press(ctl)
    printed(board, "not acknowledged in time", mark)
    return ready


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    air = ThreadedAir()
    try:
        scanner = Scanner(air)
        wearable = Wearable(tmp_path_factory.mktemp("privacy"), air)
        try:
            ready = live_a_little(wearable)
            events = wearable.ctl.events()
            adverts = [e for e in events if e.get("ev") == "adv"]
            last, stop = bytes.fromhex([e for e in adverts if e["data"]][-1]["data"]), adverts[-1]
            assert stop["data"] is None  # the wearable stopped advertising: its last segment is over
            # the air delivers with a lag: wait for one of the adverts sent in the segment's last 0.1 s
            waits.until(lambda: any(h["data"] == last and h["t"] >= stop["t"] - 0.1 for h in scanner.heard),
                        WAIT_S, "the scanner to hear the end of the last transmission")
        finally:
            wearable.close()
            scanner.close()
    finally:
        air.close()
    cut = cut_by_reset(events)
    found = [(truth(segments), segments) for segments in transmissions(scanner.heard)
             if segments[0][0]["data"].hex() not in cut]
    print("%d transmission(s) cut short by a reboot of the test's, left out" % len(cut))
    for frame, segments in found:
        print("%-11s %s, %d segment(s)" % (frame.kind, opening(segments), len(segments)))
    return found, ready, events


def test_the_capture_holds_every_type_of_transmission(capture):
    kinds = [frame.kind for frame, _ in capture[0]]
    assert {"heartbeat", "low_battery", "sos", "cancel", "test_sos"} <= set(kinds)
    assert kinds.count("heartbeat") >= 4 and kinds.count("sos") == 2


def test_no_classifier_tells_the_types_apart_by_their_first_3_s(capture):
    """SPEC.md 3.3: what the air shows of an opening is the same for every type, so the best
    a classifier can do on it is to guess (it learns one class for the one feature vector)."""
    features = {}
    for frame, segments in capture[0]:
        features.setdefault(frame.kind, set()).add(tuple(sorted(opening(segments).items())))
    every = set().union(*features.values())
    assert len(every) == 1, "\n".join("%s: %s" % item for item in features.items())
    seen = dict(next(iter(every)))
    assert seen["length"] == 31 and seen["ad_structures"] == ((0x01, 1), (0xFF, 26)) and seen["company_id"] == "ffff"
    assert seen["header"] == 0x12 and seen["interval_ms"] == 30 and seen["duration_s"] in (2.9, 3.0)
    assert seen["addr_type"] == 1 and seen["addr_top_bits"] == 0  # random, non-resolvable private
    # every advertising start the firmware asked its controller for: non-connectable, 30 ms
    asked = [e for e in capture[2] if e.get("ev") == "adv" and e["data"] is not None]
    assert {(e["connectable"], e["interval_us"], e["resp"]) for e in asked} == {(False, 30000, None)}


def test_only_an_sos_goes_on_after_its_opening_as_spec_says(capture):
    """What SPEC.md 3.3 says remains distinguishable: an SOS (or test SOS) that is neither
    acknowledged nor cancelled comes back after its opening; nothing else does."""
    cancelled = {frame.fields["sos_counter"] for frame, _ in capture[0] if frame.kind == "cancel"}
    for frame, segments in capture[0]:
        if frame.kind in ("sos", "test_sos") and frame.counter not in cancelled:
            assert len(segments) >= 2, frame.kind
            again = segments[1][0]["t"] - segments[0][0]["t"]
            assert OPENING_S + RESEND_EVERY_S - 1 - 0.3 <= again <= OPENING_S + RESEND_EVERY_S + 0.3, again
        elif frame.kind not in ("sos", "test_sos"):
            assert len(segments) == 1, frame.kind


def test_heartbeats_come_when_drawn_the_first_after_start_too(capture):
    """heartbeat_s = 4: each wait 2 to 6 s, the first counted from the start; a heartbeat due
    while another transmission is on the air (its 3 s opening) waits for it to end."""
    found, ready, _ = capture
    starts = [segments[0][0]["t"] for frame, segments in found if frame.kind == "heartbeat"]
    print("first heartbeat %.2f s after start, then %s s apart"
          % (starts[0] - ready[0], [round(b - a, 2) for a, b in zip(starts, starts[1:])]))
    assert 2 - 0.2 <= starts[0] - ready[0] <= 6 + 0.5
    assert all(OPENING_S - 0.1 <= b - a <= 6 + OPENING_S + 0.5 for a, b in zip(starts, starts[1:]))


JITTER_SCRIPT = """\
import json
import wearable
H = 21600000
waits = [wearable.heartbeat_interval_ms(H) for _ in range(%d)]
bins = [0] * 10
for w in waits:
    bins[(w - H // 2) * 10 // H] += 1
print("waits " + json.dumps([min(waits), max(waits), sum(waits) // len(waits), bins, waits[:3]]))
"""


@pytest.fixture
def jitter_board(tmp_path):
    def run(count):
        directory = tmp_path / "flash"
        if not directory.exists():
            copy_to_directory(firmware_files("wearable"), directory)
        (directory / "main.py").write_text(JITTER_SCRIPT % count)
        board = VirtualBoard(directory, "socket", workdir=tmp_path / "vm").start()
        try:
            text = board.control.wait_for(lambda e: e.get("text", "").startswith("waits"), timeout=60,
                                          ev="print")["text"]
        finally:
            board.stop()
        return json.loads(text.split(" ", 1)[1])
    return run


def test_heartbeat_waits_are_uniform_in_half_to_one_and_a_half_times_heartbeat_s(jitter_board):
    """The firmware's own draw (os.urandom on the board), 4000 times on the MicroPython VM."""
    low, high, mean, bins, first = jitter_board(4000)
    h = 21600000
    print("waits %.2f h to %.2f h, mean %.2f h, per tenth %s" % (low / 3.6e6, high / 3.6e6, mean / 3.6e6, bins))
    assert h // 2 <= low < 0.52 * h and 1.48 * h < high < 1.5 * h
    assert abs(mean - h) < 0.03 * h
    assert all(300 <= b <= 500 for b in bins)  # 400 expected per tenth; 7 standard deviations of room
    assert jitter_board(3)[4] != first  # another boot draws other waits


HOUR = 3600.0


def advertising(events):
    """The transmissions a board's controller put on the air, from its "adv" events: per
    frame, its segments as (start event, stop time)."""
    out, current = {}, None
    for e in events:
        if e.get("ev") != "adv":
            continue
        if current is not None:
            out[current["data"]][-1][1] = e["vt"]
            current = None
        if e["data"] is not None:
            current = e
            out.setdefault(e["data"], []).append([e, None])
    return out


def test_a_day_of_life_shows_the_same_opening_for_every_type(tmp_path):
    """A simulated day (time warp): heartbeats as drawn, an SOS cancelled at 5 h, an SOS left
    unacknowledged at 14 h. Every transmission opens the same way on the controller; only the
    unacknowledged SOS goes on; heartbeats come 3 to 9 h apart, a handful a day."""
    directory = tmp_path / "flash"
    copy_to_directory(firmware_files("wearable"), directory)
    (directory / "config.json").write_text(json.dumps({
        "device_id": "00010001", "role": "wearable", "key": KEY.hex(), "battery_pin": BATTERY,
        "resend_every_s": 4, "sos_timeout_s": 12}))
    board = VirtualBoard(directory, "socket", workdir=tmp_path / "vm", warp=True).start()
    try:
        ctl = board.control
        ctl.set_adc(BATTERY, FULL_U16)
        mark = ctl.mark()
        board.reset()
        start = printed(board, "wearable: ready", mark)["vt"]
        for at, level in ((5 * HOUR, 0), (5 * HOUR + 1.3, 1), (5 * HOUR + 4.1, 0), (5 * HOUR + 5.4, 1)):
            ctl.at(start + at, lambda level=level: ctl.set_pin(BUTTON, level))  # SOS, then cancel
        for i in range(3):
            ctl.at(start + 14 * HOUR + 0.15 * i, lambda: ctl.set_pin(BUTTON, 0))  # three quick presses
            ctl.at(start + 14 * HOUR + 0.15 * i + 0.06, lambda: ctl.set_pin(BUTTON, 1))
        ctl.at(start + 24 * HOUR, lambda: None)  # the day's end: no sleep is warped past it
        ctl.wait_for(lambda e: e["vt"] >= start + 24 * HOUR, timeout=120)
        sent = advertising(ctl.events())
    finally:
        board.stop()
    seen = {}
    for data, segments in sent.items():
        raw = bytes.fromhex(data)
        frame = frames.unpack(ble.frame_from_advertisement(raw), KEYS)
        first, stop = segments[0]
        features = (len(raw), tuple((t, len(d)) for t, d in ble.ad_structures(raw)), raw[7], first["interval_us"],
                    first["connectable"], first["resp"], first["addr_type"], int(first["addr"][:2], 16) >> 6,
                    round(stop - first["vt"], 1))
        seen.setdefault(frame.kind, []).append((first["vt"] - start, features, len(segments), frame))
    for kind_, found in sorted(seen.items()):
        print("%-11s at %s h: %s" % (kind_, [round(at / HOUR, 2) for at, _, _, _ in found], found[0][1]))
    assert {"heartbeat", "sos", "cancel"} <= set(seen)
    openings = {features for found in seen.values() for _, features, _, _ in found}
    assert openings == {(31, ((0x01, 1), (0xFF, 26)), 0x12, 30000, False, None, 1, 0, 3.0)}
    cancelled = {f.fields["sos_counter"] for _, _, _, f in seen["cancel"]}
    for kind_, found in seen.items():
        for _, _, count, frame in found:
            assert (count > 1) == (kind_ == "sos" and frame.counter not in cancelled), (kind_, count)
    beats = [at for at, _, _, _ in seen["heartbeat"]]
    assert 2 <= len(beats) <= 8
    assert 0.5 * 6 * HOUR - 60 <= beats[0] <= 1.5 * 6 * HOUR + 60  # the first after start is drawn too
    assert all(0.5 * 6 * HOUR - 60 <= b - a <= 1.5 * 6 * HOUR + 60 for a, b in zip(beats, beats[1:]))
