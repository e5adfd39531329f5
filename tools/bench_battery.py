"""``ansim bench battery``: how long a wearable lives on its cell, measured on the virtual board.

The real wearable firmware runs a virtual day (``--hours``, 24) on an ESP32-C3 virtual board
with the time warp (simulators/hardware/virtual_board.py: sleeps take no time, awake it runs at real
speed): power-on, idle, its heartbeats (6 h on average, jittered), at 1/3 of the day one SOS
held 1.3 s that nobody acknowledges (no agent: its 3 s burst and re-sends, listening for the
ack, until ``sos_timeout_s``, 120 s), at 2/3 an SOS cancelled by a second long press. The
board's own events say what it did: time awake, in light sleep, in deep sleep (``sleep``,
``wake`` and ``hello`` events, on the virtual clock ``vt``), advertising (``adv`` events: the
interval, the advert's bytes) and scanning (``scan`` events). Those counts times the currents
below give the charge; the charge per week with one SOS and one cancel gives the average
current and the life on ``--capacity-mah`` (1,000). Beside it, measured the same way in the
same run: a baseline board whose main.py only deep-sleeps 6 h and wakes, and the wearable's
own day if it had only light-slept (its deep-sleep time charged at light-sleep current).

Model: awake, the CPU draws ``cpu``; advertising, each advertising event transmits the PDU on
3 channels (1 Mbit/s: 16 bytes of preamble, access address, header, AdvA and CRC plus the
advert data, 8 us a byte) plus ``HOP_US`` each to switch channel, every interval plus 5 ms (the
mean of BLE's 0-10 ms advDelay); scanning, the receiver is on all the time (window = interval)
except while transmitting. The VM's awake time is a PC's: an ESP32-C3 starting MicroPython
after a deep sleep takes longer (it is counted as the VM took it).
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from ansim_protocol import ble, frames
from ansim_protocol.crypto import DeviceKeys
from ansim_protocol.errors import FrameError
from ansim_simulators.hardware.virtual_board import BoardError, VirtualBoard
from ansim_tools.flash import copy_to_directory, firmware_files

DATASHEET = "https://www.espressif.com/sites/default/files/documentation/esp32-c3_datasheet_en.pdf"
ESP32_DATASHEET = "https://www.espressif.com/sites/default/files/documentation/esp32_datasheet_en.pdf"
ESP_AT_SLEEP = ("https://docs.espressif.com/projects/esp-at/en/latest/esp32c3/AT_Command_Examples/"
                "sleep_at_examples.html")
# mA at 3.3 V, typical; (value, what, source)
CURRENTS = {
    "deep_sleep": (0.005, "Deep-sleep, RTC timer and RTC memory on (5 uA)",
                   "ESP32-C3 Series Datasheet, 5.6 Current Consumption, Deep-sleep " + DATASHEET),
    "light_sleep": (0.130, "Light-sleep (130 uA)",
                    "ESP32-C3 Series Datasheet, 5.6 Current Consumption, Light-sleep " + DATASHEET),
    "cpu": (20.0, "CPU at 160 MHz, radio off (modem-sleep, about 20 mA)",
            "ESP-AT sleep examples for the ESP32-C3 (modem-sleep at 160 MHz, about 20 mA) " + ESP_AT_SLEEP),
    "tx": (130.0, "radio transmitting (Bluetooth LE, 0 dBm; upper bound)",
           "ESP32 Series Datasheet, RF power consumption, Bluetooth LE TX 0 dBm (130 mA): the ESP32-C3's "
           "table lists Wi-Fi only " + ESP32_DATASHEET),
    "rx": (84.0, "radio receiving (84 mA)",
           "ESP32-C3 Series Datasheet, 5.6 Current Consumption, RX 802.11b/g/n HT20 (same receiver; no BLE row) "
           + DATASHEET),
}
CAPACITY_MAH = 1000.0
GOAL_MONTHS = 12.0
HOURS_PER_MONTH = 365.25 * 24 / 12
HOP_US = 150  # channel switch between the 3 advertising channels (radio still on)
ADV_DELAY_MEAN_MS = 5.0  # BLE advDelay: 0-10 ms random, added to every advertising interval
PDU_OVERHEAD = 16  # preamble 1 + access address 4 + header 2 + AdvA 6 + CRC 3
BUTTON, BATTERY = 0, 35
FULL_BATTERY_U16 = 3900 * 65535 // 2 // 3300
HOLD_S, CANCEL_AFTER_S = 1.3, 3.0
HEARTBEAT_S = 21600
BASELINE_MAIN = """
import machine
machine.deepsleep(%d)
""" % (HEARTBEAT_S * 1000)


def say(text=""):
    print(text, flush=True)


class BenchFailed(RuntimeError):
    pass


# -- what the events say ----------------------------------------------------------------------

def advert_on_air_us(data_len):
    """Radio-on time of one advertising event: the PDU on 3 channels, plus the channel hops."""
    return 3 * ((PDU_OVERHEAD + data_len) * 8 + HOP_US)


def integrate(events, start, end, currents=None):
    """Counts and charge of the stretch [start, end] (virtual seconds) of a board's events.

    Returns {"awake_s", "light_s", "deep_s", "tx_s", "rx_s", "adverts", "advert_bytes",
    "wakes", "charge_mas"}: the state at each moment is the last one an event set (awake after
    ``hello`` or ``wake``, asleep after ``sleep``; advertising between ``adv`` events with and
    without data; receiving between ``scan`` on and off; sleep stops the radio)."""
    currents = currents or {k: v[0] for k, v in CURRENTS.items()}
    out = {"awake_s": 0.0, "light_s": 0.0, "deep_s": 0.0, "tx_s": 0.0, "rx_s": 0.0, "adverts": 0.0,
           "advert_bytes": 0, "wakes": 0, "charge_mas": 0.0}
    state, adv, scanning = "awake", None, False  # adv: (interval_s, data_len)
    t = start

    def run_until(until):
        nonlocal t
        dt = until - t
        if dt <= 0:
            return
        t = until
        if state != "awake":
            out[state + "_s"] += dt
            out["charge_mas"] += currents[state + "_sleep"] * dt
            return
        out["awake_s"] += dt
        tx = 0.0
        if adv is not None:
            n = dt / (adv[0] + ADV_DELAY_MEAN_MS / 1000)
            out["adverts"] += n
            tx = min(dt, n * advert_on_air_us(adv[1]) / 1e6)
        rx = dt - tx if scanning else 0.0
        out["tx_s"] += tx
        out["rx_s"] += rx
        out["charge_mas"] += currents["tx"] * tx + currents["rx"] * rx + currents["cpu"] * (dt - tx - rx)

    for e in events:
        vt = e.get("vt")
        if vt is None or vt < start:
            ev = e.get("ev")  # the state before the stretch starts still counts
        else:
            if vt > end:
                break
            run_until(vt)
            ev = e.get("ev")
        if ev == "sleep":
            state = "deep" if e.get("mode") == "deep" else "light"
            adv, scanning = None, False  # the radio is off (deep sleep: the VM is gone)
        elif ev == "wake" or ev == "hello":
            if ev == "wake" and vt is not None and vt >= start:
                out["wakes"] += 1
            state = "awake"
        elif ev == "adv":
            if e.get("data"):
                adv = (e["interval_us"] / 1e6, len(e["data"]) // 2)
                if vt is not None and vt >= start:
                    out["advert_bytes"] = adv[1]
            else:
                adv = None
        elif ev == "scan":
            scanning = bool(e.get("on"))
    run_until(end)
    out["adverts"] = round(out["adverts"])
    return out


def subtract(a, b):
    """Counts of ``a`` less those of ``b`` (a stretch within it); float dust below 1e-9 is 0."""
    out = {}
    for k in a:
        v = a[k] if k == "advert_bytes" else a[k] - b[k]
        out[k] = 0.0 if isinstance(v, float) and abs(v) < 1e-9 else v
    return out


def life(charge_mas_per_week, capacity_mah=CAPACITY_MAH):
    """Average mA and months on ``capacity_mah`` for this charge a week."""
    avg_ma = charge_mas_per_week / (7 * 86400)
    hours = capacity_mah / avg_ma
    return avg_ma, hours / HOURS_PER_MONTH


# -- the runs -----------------------------------------------------------------------------------

def _board(flash_dir, workdir):
    return VirtualBoard(flash_dir, "socket", workdir=workdir, warp=True, chip="esp32c3").start()


def _wait_vt(board, vt, timeout):
    try:
        board.control.wait_for(lambda e: e.get("vt", 0) >= vt, timeout=timeout)
    except TimeoutError:
        raise BenchFailed("the board's virtual clock did not reach the end of the day in %.0f s; VM log: %s"
                          % (timeout, board.log()[-500:])) from None
    for e in board.control.events():
        if e.get("ev") in ("bridge_error",) or (e.get("ev") == "exit" and e.get("error")):
            raise BenchFailed("the firmware stopped: %s" % json.dumps(e)[:300])


def run_baseline(tmp, hours):
    flash_dir = tmp / "baseline-flash"
    flash_dir.mkdir(parents=True)
    (flash_dir / "main.py").write_text(BASELINE_MAIN)
    board = _board(flash_dir, tmp / "baseline-vm")
    try:
        ctl = board.control
        start = ctl.wait_for(ev="hello", timeout=10)["vt"]
        end = start + hours * 3600
        ctl.at(end, lambda: None)  # no sleep is warped past the end
        _wait_vt(board, end, 60 + hours * 2)
        return integrate(ctl.events(), start, end)
    finally:
        board.stop()


def run_wearable(tmp, hours, sos_timeout_s):
    key = os.urandom(16)
    keys = DeviceKeys(key)
    flash_dir = tmp / "wearable-flash"
    copy_to_directory(firmware_files("wearable"), flash_dir)
    config = {"device_id": "00010001", "role": "wearable", "key": key.hex(), "button_pin": BUTTON,
              "battery_pin": BATTERY, "heartbeat_s": HEARTBEAT_S}
    if sos_timeout_s is not None:
        config["sos_timeout_s"] = sos_timeout_s
    (flash_dir / "config.json").write_text(json.dumps(config))
    board = _board(flash_dir, tmp / "wearable-vm")
    try:
        ctl = board.control
        ctl.set_adc(BATTERY, FULL_BATTERY_U16)  # for every boot from now on
        mark = ctl.mark()
        board.reset()
        start = ctl.wait_for(lambda e: "wearable: ready" in e.get("text", ""), since=mark, ev="print",
                             timeout=20)["vt"]
        end = start + hours * 3600
        sos_at, cancel_at = start + hours * 3600 / 3, start + hours * 3600 * 2 / 3
        for at in (sos_at, cancel_at, cancel_at + CANCEL_AFTER_S):
            ctl.at(at, lambda: ctl.set_pin(BUTTON, 0))
            ctl.at(at + HOLD_S, lambda: ctl.set_pin(BUTTON, 1))
        ctl.at(end, lambda: None)
        _wait_vt(board, end, 120 + hours * 3 + (sos_timeout_s or 120) * 2)
        events = ctl.events(mark)
    finally:
        board.stop()
    sent = []
    for e in events:
        if e.get("ev") == "adv" and e.get("data"):
            try:
                f = frames.unpack(ble.frame_from_advertisement(bytes.fromhex(e["data"])), keys)
            except (FrameError, ValueError):
                continue
            if not sent or sent[-1][1] != f.counter:
                sent.append((f.kind, f.counter, e["vt"]))
    kinds = [k for k, _, _ in sent]
    if "sos" not in kinds or "cancel" not in kinds:
        raise BenchFailed("the day's SOS and cancel were not both advertised: %s" % kinds)

    def episode(at):
        """From the press to the next deep sleep."""
        asleep = next((e["vt"] for e in events if e.get("ev") == "sleep" and e.get("mode") == "deep"
                       and e["vt"] > at), end)
        return at, min(asleep, end)

    sos, cancel = episode(sos_at), episode(cancel_at)
    day = integrate(events, start, end)
    parts = {"sos": integrate(events, *sos), "cancel": integrate(events, *cancel)}
    rest = subtract(subtract(day, parts["sos"]), parts["cancel"])
    rest_s = hours * 3600 - (sos[1] - sos[0]) - (cancel[1] - cancel[0])
    return {"day": day, "sos": parts["sos"], "cancel": parts["cancel"], "rest": rest, "rest_s": rest_s,
            "sos_s": sos[1] - sos[0], "cancel_s": cancel[1] - cancel[0], "sent": sent,
            "heartbeats": kinds.count("heartbeat")}


def figures(baseline, wearable, hours, capacity_mah=CAPACITY_MAH, currents=None):
    """The battery figures, all from the counts: charge a week with one SOS and one cancel."""
    currents = currents or {k: v[0] for k, v in CURRENTS.items()}
    week_s = 7 * 86400
    rest = wearable["rest"]
    per_s = rest["charge_mas"] / wearable["rest_s"]
    week = per_s * (week_s - wearable["sos_s"] - wearable["cancel_s"]) + wearable["sos"]["charge_mas"] + \
        wearable["cancel"]["charge_mas"]
    avg_ma, months = life(week, capacity_mah)
    # the same week had it only light-slept: its deep-sleep time at light-sleep current
    extra = (currents["light_sleep"] - currents["deep_sleep"]) * rest["deep_s"] / wearable["rest_s"] * week_s
    light_ma, light_months = life(week + extra, capacity_mah)
    base_ma, base_months = life(baseline["charge_mas"] / (hours * 3600) * week_s, capacity_mah)
    return {"week_mas": week, "avg_ma": avg_ma, "months": months, "light_only_ma": light_ma,
            "light_only_months": light_months, "baseline_ma": base_ma, "baseline_months": base_months,
            "goal_months": GOAL_MONTHS, "met": months >= GOAL_MONTHS, "capacity_mah": capacity_mah}


def _row(label, c):
    say("   %-34s %8.2f %8.1f %9.1f %8d %7.3f %7.2f %9.3f"
        % (label, c["awake_s"], c["light_s"], c["deep_s"], c["adverts"], c["tx_s"], c["rx_s"],
           c["charge_mas"] / 3600))


def run(args):
    hours = float(getattr(args, "hours", 24.0) or 24.0)
    sos_timeout = getattr(args, "sos_timeout", None)
    capacity = float(getattr(args, "capacity_mah", CAPACITY_MAH) or CAPACITY_MAH)
    say("ansim bench battery: the wearable firmware on an ESP32-C3 virtual board, %.0f h of virtual time "
        "(time warp), %d cores" % (hours, os.cpu_count()))
    say("   currents, mA (typical, 3.3 V):")
    for name, (value, what, source) in CURRENTS.items():
        say("     %-12s %8.3f  %s; %s" % (name, value, what, source))
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ansim-bench-battery-") as tmp:
        tmp = Path(tmp)
        try:
            baseline = run_baseline(tmp, hours)
            wearable = run_wearable(tmp, hours, sos_timeout)
        except (BenchFailed, BoardError) as err:
            print("ansim bench battery: %s" % err, file=sys.stderr)
            return 1
    f = figures(baseline, wearable, hours, capacity)
    say("\n   %-34s %8s %8s %9s %8s %7s %7s %9s" % ("", "awake s", "light s", "deep s", "adverts", "TX s",
                                                   "RX s", "mAh"))
    _row("baseline: deep sleep 6 h, wake", baseline)
    _row("wearable: the whole day", wearable["day"])
    _row("  of which the SOS (%.0f s, no ack)" % wearable["sos_s"], wearable["sos"])
    _row("  of which the cancelled SOS", wearable["cancel"])
    _row("  the rest (%d heartbeats, idle)" % wearable["heartbeats"], wearable["rest"])
    say("   adverts of %d bytes (%d us on air per advertising event); sent: %s"
        % (wearable["day"]["advert_bytes"], advert_on_air_us(wearable["day"]["advert_bytes"]),
           ", ".join("%s %d" % (k, c) for k, c, _ in wearable["sent"])))
    say("\n   a week = 7 days like the rest of this one, plus one SOS and one cancel: %.2f mAh"
        % (f["week_mas"] / 3600))
    say("   wearable:  average %.1f uA -> %.1f months on %.0f mAh (goal >= %.0f months: %s)"
        % (f["avg_ma"] * 1000, f["months"], capacity, GOAL_MONTHS, "met" if f["met"] else "MISSED"))
    say("   baseline:  average %.1f uA -> %.1f months (a board that only deep-sleeps and wakes)"
        % (f["baseline_ma"] * 1000, f["baseline_months"]))
    say("   light sleep only: average %.1f uA -> %.1f months (the wearable's deep-sleep time at light-sleep current)"
        % (f["light_only_ma"] * 1000, f["light_only_months"]))
    say("   (%.0f s of real time; no self-discharge, no regulator quiescent current, no LED or motor current)"
        % (time.monotonic() - t0))
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps({"hours": hours, "currents": CURRENTS, "baseline": baseline,
                                               "wearable": wearable, "figures": f}, indent=1))
    return 0
