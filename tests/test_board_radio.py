"""A virtual board's own BLE radio: what its firmware advertises through MicroPython's
``bluetooth`` reaches bleak on the virtual air, what is on the air reaches its ``gap_scan``,
and ``machine.lightsleep`` wakes on the button (esp32.wake_on_ext0). Small MicroPython scripts
stand in for the firmware; the last test runs the real agent."""

import asyncio
import json
import textwrap
import time

import pytest
from bleak import BleakScanner

from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_protocol import ble, frames
from ansim_protocol.crypto import DeviceKeys, epoch_of
from ansim_simulators.hardware.ble_radio import ThreadedAir, VirtualAir, bleak_backend_for
from ansim_simulators.hardware.board_radio import BoardRadio
from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.world.street import Street
from ansim_simulators.hardware.virtual_board import VirtualBoard

TIMEOUT = 10.0
BUTTON = 0

# Each press of the button: a new NRPA (advertising stopped while it changes), then advertise
# the next frame. The frames stand in for sealed SOS frames (24 bytes).
ADVERTISER_MAIN = """
import bluetooth, time
from machine import Pin
FRAMES = [bytes([0x12, n]) + bytes(range(22)) for n in range(8)]
def advertisement(frame):
    return b"\\x02\\x01\\x06" + bytes([len(frame) + 3, 0xFF, 0xFF, 0xFF]) + frame
ble = bluetooth.BLE()
ble.active(True)
pressed = []
Pin(0, Pin.IN, Pin.PULL_UP).irq(lambda p: pressed.append(1), Pin.IRQ_FALLING)
n = 0
while True:
    if pressed:
        pressed.clear()
        ble.gap_advertise(None)
        ble.config(addr_mode=3)
        addr_type, addr = ble.config("mac")
        print("addr", addr_type, addr.hex())
        ble.gap_advertise(20000, advertisement(FRAMES[n]), connectable=False)
        n += 1
    time.sleep_ms(5)
"""

# Presses: 1 scan, 2 stop, 3 report how many results came since the last report.
SCANNER_MAIN = """
import bluetooth, time
from machine import Pin
ble = bluetooth.BLE()
ble.active(True)
results = []
def irq(event, data):
    if event == 5:
        addr_type, addr, adv_type, rssi, adv_data = data
        results.append((addr_type, bytes(addr).hex(), adv_type, rssi, bytes(adv_data).hex()))
    elif event == 6:
        print("scan done")
ble.irq(irq)
presses = []
Pin(0, Pin.IN, Pin.PULL_UP).irq(lambda p: presses.append(1), Pin.IRQ_FALLING)
step = 0
heard = False
while True:
    if results and not heard:
        heard = True
        print("heard")
    if presses:
        presses.pop()
        step += 1
        if step == 1:
            ble.gap_scan(0, 30000, 30000, False)
        elif step == 2:
            ble.gap_scan(None)
        else:
            print("results", len(results))
            for r in results[:3]:
                print("result %d %s %d %d %s" % r)
            results.clear()
    time.sleep_ms(5)
"""

API_MAIN = """
import bluetooth, time
ble = bluetooth.BLE()
try:
    ble.config("mac")
except OSError as e:
    print("inactive", e.errno)
ble.active(True)
t, a = ble.config("mac")
print("mac", t, a.hex())
events = []
def irq(event, data):
    if event == 5:
        events.append(data)
        print("result %d %s %d %d %s" % (data[0], bytes(data[1]).hex(), data[2], data[3], bytes(data[4]).hex()))
    elif event == 6:
        print("scan done")
ble.irq(irq)
ble.gap_scan(50, 30000, 30000)
time.sleep_ms(200)
for _ in range(2):
    ble.config(addr_mode=1)
    print("static %d %s" % (ble.config("mac")[0], ble.config("mac")[1].hex()))
ble.config(addr_mode=3)
print("nrpa %d %s" % (ble.config("mac")[0], ble.config("mac")[1].hex()))
ble.gap_advertise(100000, b"\x02\x01\x06", connectable=False)
try:
    ble.config(addr_mode=3)
except OSError as e:
    print("busy advertising", e.errno)
ble.gap_advertise(None)
ble.gap_scan(0)
try:
    ble.config(addr_mode=3)
except OSError as e:
    print("busy scanning", e.errno)
try:
    ble.gap_scan(0)
except OSError as e:
    print("again", e.errno)
try:
    ble.config(addr_mode=2)
except OSError as e:
    print("rpa", e.errno)
ble.gap_scan(None)
ble.gap_scan(0, 30000, 30000)
print("scanning")
while not events:
    time.sleep_ms(5)
print("kept", bytes(events[0][1]).hex())
ble.active(False)
print("done")
"""

SLEEPER_MAIN = """
import esp32, machine
from machine import Pin
button = Pin(0, Pin.IN, Pin.PULL_UP)
esp32.wake_on_ext0(button, esp32.WAKEUP_ALL_LOW)
machine.lightsleep(20)
print("woke", machine.wake_reason())
machine.lightsleep(60000)
print("woke", machine.wake_reason(), button.value())
"""


@pytest.fixture
def board(tmp_path, request):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(textwrap.dedent(request.param))
    with VirtualBoard(flash, "socket", workdir=tmp_path / "vm") as b:
        yield b


def wait(control, **kwargs):
    """control.wait_for off the event loop."""
    return asyncio.to_thread(control.wait_for, timeout=TIMEOUT, **kwargs)


def watched(air, heard):
    """A bleak backend on ``air`` that also queues (address, AdvertisementData)."""
    class Watched(bleak_backend_for(air)):
        def call_detection_callbacks(self, device, adv):
            super().call_detection_callbacks(device, adv)
            heard.put_nowait((device.address, adv))
    return Watched


async def next_from(heard, address):
    while True:
        seen, adv = await asyncio.wait_for(heard.get(), TIMEOUT)
        if seen == address:
            return adv


def bleak_address(hex_be):
    return ":".join(hex_be[i:i + 2] for i in range(0, 12, 2)).upper()


@pytest.mark.parametrize("board", [ADVERTISER_MAIN], indirect=True)
def test_the_boards_advertisement_reaches_bleak_from_its_rotating_private_address(board):
    control = board.control

    async def main():
        air = VirtualAir()
        heard = asyncio.Queue()
        async with BoardRadio(board, air, rssi=-55) as radio, \
                BleakScanner(lambda d, a: None, backend=watched(air, heard)):
            seen = []
            for n in range(2):
                mark = control.mark()
                await asyncio.to_thread(control.press, BUTTON, 30)
                event = await wait(control, since=mark, ev="adv", predicate=lambda e: e["data"] is not None)
                printed = await wait(control, since=mark, ev="print", predicate=lambda e: e["text"].startswith("addr"))
                adv = await next_from(heard, bleak_address(event["addr"]))
                seen.append((event, printed["text"].split(), adv, radio.address))
        await air.close()
        return seen

    seen = asyncio.run(main())
    addresses = set()
    for n, (event, printed, adv, on_air) in enumerate(seen):
        frame = bytes([0x12, n]) + bytes(range(22))
        assert adv.manufacturer_data == {0xFFFF: frame}
        assert adv.platform_data[0].data_bytes == ble.advertisement(frame)  # the exact bytes
        assert adv.rssi == -55
        assert printed == ["addr", "1", event["addr"]] and event["addr_type"] == 1
        assert int(event["addr"][:2], 16) >> 6 == 0  # a non-resolvable private address
        assert on_air == bleak_address(event["addr"])
        assert event["interval_us"] == 20000 and event["connectable"] is False
        addresses.add(event["addr"])
    assert len(addresses) == 2  # a new address with the new frame


@pytest.mark.parametrize("board", [SCANNER_MAIN], indirect=True)
def test_the_air_reaches_the_boards_scan_irq_only_while_it_scans(board):
    control = board.control
    data = ble.advertisement(bytes(range(24)))

    async def step(expect):
        mark = control.mark()
        await asyncio.to_thread(control.press, BUTTON, 30)
        return await wait(control, since=mark, **expect)

    async def report():
        mark = control.mark()
        await asyncio.to_thread(control.press, BUTTON, 30)
        count = await wait(control, since=mark, ev="print", predicate=lambda e: e["text"].startswith("results"))
        lines = [e["text"].split() for e in control.events(mark) if e.get("text", "").startswith("result ")]
        return int(count["text"].split()[1]), lines

    async def main():
        air = VirtualAir()
        heard = asyncio.Queue()
        async with BoardRadio(board, air) as radio, BleakScanner(lambda d, a: None, backend=watched(air, heard)):
            other = await air.add_advertiser(data, interval_ms=20, rssi=-71)
            for _ in range(3):  # on the air for a while: the board does not scan yet
                await next_from(heard, other.address)
            forwarded_before = radio.forwarded
            # the radio would hand it over, but nothing is listening: the board drops it
            control.send({"cmd": "scan_result", "addr_type": 1, "addr": "c12233445566", "adv_type": 3,
                          "rssi": -40, "data": data.hex()})
            await step({"ev": "scan", "on": True})  # step 1: scan
            await wait(control, ev="print", text="heard\n")
            await step({"ev": "scan", "on": False})  # step 2: stop
            during = await report()  # step 3
            for _ in range(3):  # more adverts on the air after the scan stopped
                await next_from(heard, other.address)
            control.send({"cmd": "scan_result", "addr_type": 1, "addr": "c12233445566", "adv_type": 3,
                          "rssi": -40, "data": data.hex()})
            after = await report()
        await air.close()
        return forwarded_before, during, after, other.address

    forwarded_before, during, after, address = asyncio.run(main())
    assert forwarded_before == 0
    count, lines = during
    assert count >= 1
    assert all(line == ["result", "1", address.replace(":", "").lower(), "3", "-71", data.hex()] for line in lines)
    assert after == (0, [])
    done = [e for e in board.control.events() if e.get("text") == "scan done\n"]
    assert len(done) == 1


@pytest.mark.parametrize("board", [API_MAIN], indirect=True)
def test_addresses_scans_and_errors_behave_as_on_an_esp32_with_nimble(board):
    control = board.control
    control.wait_for(ev="print", text="scanning\n", timeout=TIMEOUT)
    control.send({"cmd": "scan_result", "addr_type": 0, "addr": "240ac4000009", "adv_type": 3, "rssi": -48,
                  "data": "020106"})
    control.wait_for(ev="exit", file="main.py", timeout=TIMEOUT)
    lines = [e["text"].strip() for e in control.events() if e.get("ev") == "print"]
    assert lines[:3] == ["inactive 19", "mac 0 240ac4000003", "scan done"]
    static1, static2 = lines[3].split()[1:], lines[4].split()[1:]
    assert static1[0] == static2[0] == "1" and static1[1] != static2[1]
    assert all(int(a[1][:2], 16) >> 6 == 3 for a in (static1, static2))
    nrpa = lines[5].split()
    assert nrpa[:2] == ["nrpa", "1"] and int(nrpa[2][:2], 16) >> 6 == 0
    assert lines[6:] == ["busy advertising 16", "busy scanning 16", "again 114", "rpa 95", "scan done",
                         "scanning", "result 0 240ac4000009 3 -48 020106", "kept 000000000000", "scan done", "done"]
    assert [e["on"] for e in control.events() if e.get("ev") == "scan"] == [True, False, True, False, True, False]


@pytest.mark.parametrize("board", [SLEEPER_MAIN], indirect=True)
def test_lightsleep_wakes_on_the_button(board):
    control = board.control
    assert control.wait_for(ev="wake", timeout=TIMEOUT)["reason"] == 4  # the 20 ms timer
    control.wait_for(ev="print", text="woke 4\n", timeout=TIMEOUT)
    asleep = control.wait_for(ev="sleep", ms=60000, timeout=TIMEOUT)
    assert asleep["ext0"] == [BUTTON, 0]
    control.press(BUTTON, ms=30)
    woke = control.wait_for(ev="wake", reason=2, timeout=TIMEOUT)
    assert woke["ms"] < 60000 and woke["t"] - asleep["t"] < TIMEOUT
    assert control.wait_for(ev="print", predicate=lambda e: e["text"].startswith("woke 2"), timeout=TIMEOUT)


# Advertises the SOS frame in sos.bin and scans; prints the sealed downlink frames it hears.
SOS_MAIN = """
import bluetooth, time
ble = bluetooth.BLE()
ble.active(True)
heard = []
def irq(event, data):
    if event == 5:
        adv = bytes(data[4])
        if adv[-24:][:1] == b"\\x13" and adv[-24:] not in heard:
            heard.append(adv[-24:])
ble.irq(irq)
frame = open("sos.bin", "rb").read()
ble.config(addr_mode=3)
ble.gap_advertise(30000, b"\\x02\\x01\\x06" + bytes([len(frame) + 3, 0xFF, 0xFF, 0xFF]) + frame, connectable=False)
ble.gap_scan(0, 30000, 30000)
while True:
    while heard:
        print("downlink", heard.pop().hex())
    time.sleep_ms(10)
"""


def test_the_agent_hears_the_boards_sos_and_the_centers_ack_reaches_its_scan(tmp_path, mqtt_client):
    air = ThreadedAir()
    try:
        with MosquittoBroker(workdir=tmp_path / "center") as center:
            street = Street(tmp_path / "street", center_port=center.port,
                            overrides={"ble": {"enabled": "true", "virtual_air": '"%s"' % air.spec}})
            view = mqtt_client(center)
            view.subscribe("ansim/center/v1/jung-gu/alerts/#")
            wearable = street.wearables[0]
            keys = DeviceKeys(wearable.key)
            sos = frames.build_sealed("sos", {"lat": None, "lon": None, "accuracy_m": 0}, keys, 5,
                                      epoch_of(time.time()))
            flash = tmp_path / "flash"
            flash.mkdir()
            (flash / "sos.bin").write_bytes(sos)
            (flash / "main.py").write_text(textwrap.dedent(SOS_MAIN))
            with Agent(config_module.load(street.config_path), virtual_air=air), \
                    VirtualBoard(flash, "socket", workdir=tmp_path / "vm") as board, \
                    BoardRadio(board, air, rssi=-58):
                alert = json.loads(view.next_message(TIMEOUT).payload)
                view.publish("ansim/center/v1/agents/%s/ack" % street.agent_id,
                             json.dumps({"alert_id": alert["alert_id"], "status": "dispatched"}))
                heard = board.control.wait_for(ev="print", timeout=TIMEOUT,
                                               predicate=lambda e: e["text"].startswith("downlink"))
    finally:
        air.close()
    assert alert["alert_id"] == "%s-5" % wearable.hex_id and alert["path"]["rssi"] == -58
    ack = frames.unpack(bytes.fromhex(heard["text"].split()[1]), keys)
    assert ack.kind == "center_ack" and ack.fields == {"acked_counter": 5, "status": "dispatched"}
