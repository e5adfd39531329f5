"""The host side of ``ansim bench firmware`` (bench_firmware): a private mosquitto with a
subscriber that stamps what it hears with the host's clock, virtual boards and their main.py,
and waits on a board's events that fail at once when the firmware or the VM dies, naming the
step and the board's last prints, instead of running into a timeout."""

import json
import socket
import threading
import time
from pathlib import Path

from ansim_simulators.fixtures.broker import MosquittoBroker, connect_client
from ansim_simulators.hardware.virtual_board import VirtualBoard

WAIT_S = 10.0  # for any one step of a scenario
LATENCY_HEAP = "512k"  # ample for every role: the latency and breakdown runs, the heap search's upper bound


class ScenarioFailed(RuntimeError):
    pass


class Rig:
    """A private mosquitto and a paho subscriber that stamps every message with the host's
    monotonic clock when paho hands it over (the clock of ``Control.note``)."""

    def __init__(self, workdir):
        self.broker = MosquittoBroker(workdir=Path(workdir) / "broker").start()
        self._cond = threading.Condition()
        self.messages = []
        try:
            self.client = connect_client("127.0.0.1", self.broker.port, client_id="bench-firmware")
        except BaseException:
            self.broker.stop()
            raise
        self.client.paho.on_message = self._on_message
        # the instrument must not add Nagle's wait: its PUBACKs for the devices' QoS 1 messages
        # would otherwise hold its next publish until the broker's delayed ACK (~40 ms)
        self.client.paho.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def port(self):
        return self.broker.port

    def _on_message(self, client, userdata, msg):
        t = time.monotonic()
        with self._cond:
            self.messages.append((t, msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def subscribe(self, topic):
        self.client.subscribe(topic)

    def publish(self, topic, payload):
        """Hand to paho (QoS 1) and return at once; returns the monotonic time just before."""
        t = time.monotonic()
        self.client.paho.publish(topic, payload, qos=1)
        return t

    def mark(self):
        with self._cond:
            return len(self.messages)

    def wait(self, predicate, since, board, timeout=WAIT_S, what="a message"):
        """The first (t, topic, payload) from ``since`` on for which ``predicate`` holds;
        ScenarioFailed early if the board's firmware died."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages[since:]:
                    if predicate(*m):
                        return m
                since = max(since, len(self.messages))
                check_alive(board)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ScenarioFailed("no %s within %.0f s" % (what, timeout))
                self._cond.wait(min(left, 0.05))

    def close(self):
        self.client.close()
        self.broker.stop()


def _fatal(e):
    """An event that means the firmware (or the VM) is gone."""
    ev = e.get("ev")
    return (ev == "exit" and e.get("file") == "main.py") or ev in ("vm_exit", "bridge_error") or (
        ev == "print" and "MemoryError" in e.get("text", ""))


def check_alive(board):
    for e in board.control.events():
        if _fatal(e):
            raise ScenarioFailed("the firmware stopped: %s" % json.dumps(e)[:200])


def expect(board, since, predicate=None, timeout=WAIT_S, **fields):
    """Control.wait_for that fails at once (ScenarioFailed) when main.py or the VM ends."""
    def match(e):
        return all(e.get(k) == v for k, v in fields.items()) and (predicate is None or predicate(e))

    try:
        e = board.control.wait_for(lambda e: match(e) or _fatal(e), timeout=timeout, since=since)
    except TimeoutError:
        raise ScenarioFailed("no event %s within %.0f s" % (fields, timeout)) from None
    if not match(e):
        raise ScenarioFailed("the firmware stopped: %s" % json.dumps(e)[:200])
    return e


def printed(board, text, since, timeout=WAIT_S):
    return expect(board, since, lambda e: text in e.get("text", ""), timeout, ev="print")


def start_board(flash_dir, workdir, heap, start_timeout=10.0):
    board = VirtualBoard(flash_dir, "socket", workdir=workdir, heap=heap, start_timeout=start_timeout)
    return board.start()


def _prints(board, last=12):
    return "".join(e.get("text", "") for e in board.control.events() if e.get("ev") == "print").splitlines()[-last:]


class Failing:
    """``with Failing(board, what):`` a ScenarioFailed names the step and the board's last prints."""

    def __init__(self, board, what):
        self.board, self.what = board, what

    def __enter__(self):
        return self.board

    def __exit__(self, kind, err, tb):
        if kind is ScenarioFailed:
            raise ScenarioFailed("%s: %s; the board's last prints: %s" % (self.what, err, _prints(self.board))) from err


def main_script(body, **values):
    """A main.py for the board: ``values`` as assignments, then ``body``, which uses them."""
    return "".join("%s = %r\n" % kv for kv in values.items()) + body
