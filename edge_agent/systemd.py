"""systemd service notification (sd_notify) and a watchdog that pings only while the agent works.

Under a unit with ``Type=notify`` and ``WatchdogSec=``, systemd hands the agent a datagram
socket in ``$NOTIFY_SOCKET`` and the watchdog period in ``$WATCHDOG_USEC``: the agent says
``READY=1`` once it listens, ``STOPPING=1`` when it shuts down, and ``WATCHDOG=1`` at least once
per period, or systemd kills it (SIGABRT) and ``Restart=always`` starts it again.

A process that merely lives is not a working agent: a pipeline thread stuck on the store or
an uplink stuck in a loop leaves the process up and the alerts undelivered. So the pings come
from ``Watchdog``, which sends ``WATCHDOG=1`` only while every ``Heartbeat`` (one per thread
that must turn: "pipeline", "uplink") has beaten recently, and otherwise stops pinging, logs
which one is stalled and puts it in the unit's status (``systemctl status ansim-agent``).

Why hand-written rather than a library: the protocol is one datagram of ``KEY=value`` lines
sent to the address in ``$NOTIFY_SOCKET`` (a path, or an abstract socket written with a
leading ``@``), about twenty lines here. On PyPI, ``sdnotify`` (pure Python) has had no
release since 2017, does not read ``WATCHDOG_USEC``/``WATCHDOG_PID`` and swallows every
error; ``systemd-python`` (the systemd project's binding, last release 2023) and ``cysystemd``
are C extensions built against libsystemd, so the Pi and CI would need ``libsystemd-dev``,
``pkg-config`` and a compiler (or a matching wheel) for one ``sendto``. Neither is in
constraints.txt, and none of them offers the part that matters here, the heartbeats. Nothing
in this module needs more than the standard library.
"""

import logging
import os
import socket
import threading
import time

log = logging.getLogger("ansim.agent.systemd")

# Used for stalled() when the agent is not under a systemd watchdog (no interval to halve).
DEFAULT_STALE_AFTER_S = 15.0

_failed_once = False  # a broken notify socket is logged once, not at every ping


def _address():
    """The socket address in $NOTIFY_SOCKET, or None: unset, or a kind this module does not
    speak (systemd 254+ may also pass ``vsock:`` addresses, for virtual machines)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        return "\0" + address[1:]  # abstract namespace
    if address.startswith("/"):
        return address
    if address:
        log.debug("NOTIFY_SOCKET=%r is not a unix socket: not notifying", address)
    return None


def notify(message):
    """Send ``message`` (newline-separated ``KEY=value`` assignments) to systemd. Returns True
    if it was sent; False, doing nothing, when not started by systemd with a notify socket,
    or when sending failed (logged once: the agent keeps running without systemd's ear)."""
    global _failed_once
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as err:
        if not _failed_once:
            _failed_once = True
            log.warning("could not notify systemd on %s: %s", os.environ.get("NOTIFY_SOCKET"), err)
        return False
    return True


def ready():
    """The agent is up (adapters started, listening): systemd marks the unit started."""
    return notify("READY=1")


def stopping():
    """The agent is shutting down of its own accord."""
    return notify("STOPPING=1")


def status(text):
    """One line for ``systemctl status`` (a newline would start another assignment)."""
    return notify("STATUS=" + " ".join(str(text).splitlines()))


def watchdog_interval():
    """The watchdog period in seconds that systemd expects pings within (``WatchdogSec=``), or
    None when not under a watchdog: WATCHDOG_USEC unset or not a positive integer, or
    WATCHDOG_PID set to another process (a child that inherited the environment)."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class Heartbeat:
    """Progress of one thread: it calls ``beat()`` every time round its loop. Starts as if it
    had just beaten (the thread has until ``stale_after`` to get going)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.last = clock()

    def beat(self):
        self.last = self.clock()  # one float store: safe from any thread, cheap in a hot loop


class Watchdog:
    """Pings systemd's watchdog every ``interval / 2`` while every heartbeat in ``beats``
    (name -> Heartbeat) has beaten within ``stale_after`` (default ``interval / 2``).

    When one has not, it stops pinging, logs the stalled names once and sends them as the
    unit's STATUS, so systemd kills the wedged agent within ``stale_after + interval`` of its
    last beat and restarts it. If the heartbeat comes back first, pinging resumes.

    ``interval`` defaults to ``watchdog_interval()``; when that is None (not under systemd, or
    no WatchdogSec) ``start()`` starts nothing, and ``stalled()`` still answers, with
    ``stale_after`` defaulting to DEFAULT_STALE_AFTER_S. The heartbeats must use the same
    clock as the watchdog."""

    def __init__(self, beats, clock=time.monotonic, *, interval=None, stale_after=None):
        self.beats = dict(beats)
        self.clock = clock
        self.interval = watchdog_interval() if interval is None else interval
        if stale_after is None:
            stale_after = self.interval / 2 if self.interval else DEFAULT_STALE_AFTER_S
        self.stale_after = stale_after
        self.pings = 0
        self._reported = ()  # the stalled names last logged, so each stall is logged once
        self._stop = threading.Event()
        self._thread = None

    def stalled(self):
        """Names of the heartbeats that have not beaten within ``stale_after``, in ``beats`` order."""
        now = self.clock()
        return [name for name, heart in self.beats.items() if now - heart.last > self.stale_after]

    def check(self):
        """One turn of the watchdog thread: ping if nothing is stalled. Returns True if it pinged
        (a ping is only sent when NOTIFY_SOCKET is set)."""
        stalled = self.stalled()
        if stalled:
            if tuple(stalled) != self._reported:
                self._reported = tuple(stalled)
                ages = ", ".join("%s (last beat %.1f s ago)" % (name, self.clock() - self.beats[name].last)
                                 for name in stalled)
                log.error("stalled: %s; no more watchdog pings, systemd will restart the agent", ages)
                status("stalled: " + ", ".join(stalled))
            return False
        if self._reported:
            log.warning("%s making progress again: watchdog pings resume", ", ".join(self._reported))
            self._reported = ()
            status("running")
        if notify("WATCHDOG=1"):
            self.pings += 1
            return True
        return False

    def start(self):
        """Ping from a daemon thread; does nothing when there is no watchdog interval."""
        if not self.interval or self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.interval)

    def _run(self):
        while not self._stop.wait(self.interval / 2):
            try:
                self.check()
            except Exception:  # the watchdog thread must not die of a logging or socket surprise
                log.exception("watchdog check failed")
