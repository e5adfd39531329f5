"""Serial intake and downlink: frames from a UART radio or a wired bell bus (SPEC.md 6.3).

The line is any pyserial URL (``/dev/ttyUSB0``, ``/dev/serial0``, ``socket://host:port``,
``rfc2217://...``, ``loop://``), opened with ``serial.serial_for_url``. One reader thread per
line does blocking reads and hands decoded frames to the event loop with
``call_soon_threadsafe``. Why a thread rather than pyserial-asyncio: on POSIX pyserial-asyncio
watches the port's file descriptor, which ``loop://`` and ``rfc2217://`` ports do not have,
whereas a blocking ``read`` works the same for every URL handler; the thread also keeps the
reopen-with-backoff loop of an unplugged USB radio as plain sequential code. One thread per
line is cheap, and the loop never blocks on the port. Writes (``send``) run in the default
executor, one at a time, so that frames never interleave on the wire.
"""

import asyncio
import errno
import logging
import threading

import serial

from ansim_protocol.serial_link import Deframer, encode

from .intake import IntakeUnavailable, Reception

log = logging.getLogger("ansim.agent.serial")

READ_TIMEOUT = 0.1  # s: how long stop() may wait for the reader to notice
WRITE_TIMEOUT = 2.0  # s: a frame takes 6 ms at 115200 baud; longer means a stuck line
RETRY_FIRST = 0.5  # s: reopen backoff after the port is lost, doubling ...
RETRY_MAX = 10.0  # s: ... up to this

_NO_DEVICE = "no such device: plug in the radio or fix [serial] url in the config"
_NO_ACCESS = ("permission denied: add the agent's user to the dialout group "
              "(sudo usermod -aG dialout USER, then restart the agent)")
_HINTS = {
    errno.ENOENT: _NO_DEVICE,
    errno.ENODEV: _NO_DEVICE,
    errno.ENXIO: _NO_DEVICE,
    errno.EACCES: _NO_ACCESS,
    errno.EPERM: _NO_ACCESS,
    errno.EBUSY: "busy: another program holds it (a serial console or ModemManager); stop that program",
    errno.ECONNREFUSED: "connection refused: start the serial server or fix [serial] url in the config",
}


def _unavailable(url, err):
    """An IntakeUnavailable naming ``url`` and the fix for ``err`` (pyserial often hides the
    OS errno in the exception's context)."""
    if isinstance(err, ValueError):
        hint = "not a usable serial URL (%s): fix [serial] url in the config" % err
    else:
        code = err.errno or getattr(err.__context__, "errno", None)
        hint = _HINTS.get(code, "cannot open (%s): check the radio and [serial] url in the config" % err)
    return IntakeUnavailable("serial port %s: %s" % (url, hint))


class SerialIntake:
    """Frames heard on one serial line become ``submit(Reception(frame, "serial", receiver))``.

    ``submit`` is called on the event loop and must not block. ``frames`` counts frames
    delivered, ``rejected``/``last_error`` the blocks dropped as noise or bad CRC.
    """

    component = "serial"

    def __init__(self, submit, url, baudrate=115200, receiver=None):
        self._submit = submit
        self.url = url
        self.baudrate = baudrate
        self.receiver = url if receiver is None else receiver
        self.frames = 0
        self._deframer = Deframer()
        self._port = None
        self._thread = None
        self._stopping = threading.Event()
        self._write_lock = asyncio.Lock()
        self._loop = None

    @property
    def rejected(self):
        return self._deframer.rejected

    @property
    def last_error(self):
        return self._deframer.last_error

    async def start(self):
        """Open the line and start reading; raises IntakeUnavailable if it cannot be opened."""
        self._loop = asyncio.get_running_loop()
        try:
            self._port = await asyncio.to_thread(self._open)
        except (serial.SerialException, OSError, ValueError) as err:
            raise _unavailable(self.url, err) from None
        self._stopping.clear()
        self._thread = threading.Thread(target=self._read, name="serial %s" % self.receiver, daemon=True)
        self._thread.start()
        log.info("serial port %s open at %d baud", self.url, self.baudrate)

    async def stop(self):
        """Stop reading and close the line."""
        if self._thread is None:
            return
        self._stopping.set()
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc):
        await self.stop()

    async def send(self, frame):
        """Write one frame, framed; raises ConnectionError while the line is down."""
        data = encode(frame)
        async with self._write_lock:
            await asyncio.to_thread(self._write, data)

    def _open(self):
        return serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=READ_TIMEOUT,
                                     write_timeout=WRITE_TIMEOUT)

    def _write(self, data):
        port = self._port
        if port is None:
            raise ConnectionError("serial port %s is not open (lost, reopening)" % self.url)
        try:
            port.write(data)
        except (serial.SerialException, OSError) as err:
            raise ConnectionError("serial port %s: write failed: %s" % (self.url, err)) from None

    def _read(self):
        """Reader thread: read, deframe, deliver; reopen the port when it is lost."""
        port = self._port
        try:
            while not self._stopping.is_set():
                try:
                    data = port.read(port.in_waiting or 1)
                except (serial.SerialException, OSError) as err:
                    log.warning("serial port %s lost (%s); reopening until it is back", self.url, err)
                    self._port = None
                    port.close()
                    # The block in flight was cut: a delimiter ends it (counted as rejected)
                    # so that it cannot swallow the first frame after the reconnect.
                    self._deliver_soon(self._deframer.feed(b"\x00"))
                    port = self._reopen()
                    if port is None:
                        return
                    self._port = port
                    log.info("serial port %s reconnected", self.url)
                    continue
                self._deliver_soon(self._deframer.feed(data))
        finally:
            self._port = None
            if port is not None:
                port.close()

    def _reopen(self):
        """The reopened port, or None once stop() is called."""
        delay = RETRY_FIRST
        while not self._stopping.wait(delay):
            try:
                return self._open()
            except (serial.SerialException, OSError, ValueError) as err:
                log.debug("serial port %s: reopen failed: %s", self.url, err)
            delay = min(delay * 2, RETRY_MAX)
        return None

    def _deliver_soon(self, frames):
        if frames:
            self._loop.call_soon_threadsafe(self._deliver, frames)

    def _deliver(self, frames):
        for frame in frames:
            self.frames += 1
            self._submit(Reception(frame, "serial", self.receiver))
