"""SerialIntake on real lines: pty pairs (the test writes as the radio on the master end, the
intake opens the slave by path) and ``socket://`` URLs to a local TCP server. Every wait is
bounded by asyncio.wait_for."""

import asyncio
import errno
import logging
import os
import random
import tty

import pytest
import serial

from ansim_agent.intake import IntakeUnavailable
from ansim_agent.serial_intake import SerialIntake
from ansim_protocol.serial_link import cobs_encode, crc16, encode

TIMEOUT = 5.0
rng = random.Random(20240613)


def random_frame(size=25):
    return bytes(rng.randrange(256) for _ in range(size))


def noise(size):
    """Random bytes closed by a delimiter: exactly one rejected block."""
    return bytes(rng.randrange(1, 256) for _ in range(size)) + b"\x00"


class Pty:
    """A raw pty pair: ``write``/``read`` are the radio's end, ``path`` is the line to open."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.received = asyncio.Queue()
        asyncio.get_running_loop().add_reader(self.master, self._readable)

    def _readable(self):
        self.received.put_nowait(os.read(self.master, 4096))

    def write(self, data):
        os.write(self.master, data)

    async def read(self, size):
        data = b""
        while len(data) < size:
            data += await asyncio.wait_for(self.received.get(), TIMEOUT)
        return data

    def close(self):
        """Unplug: the intake's reads fail and the device node goes away."""
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)
        os.close(self.slave)


class LineServer:
    """A TCP server for ``socket://`` URLs; ``accept()`` waits for the intake to connect."""

    async def __aenter__(self):
        self._connections = asyncio.Queue()
        self._server = await asyncio.start_server(
            lambda r, w: self._connections.put_nowait((r, w)), "127.0.0.1", 0)
        self.url = "socket://127.0.0.1:%d" % self._server.sockets[0].getsockname()[1]
        return self

    async def accept(self):
        return await asyncio.wait_for(self._connections.get(), TIMEOUT)

    async def __aexit__(self, *exc):
        self._server.close()


async def received(queue, count):
    return [await asyncio.wait_for(queue.get(), TIMEOUT) for _ in range(count)]


def test_frames_arrive_as_receptions():
    async def main():
        pty = Pty()
        queue = asyncio.Queue()
        frames = [random_frame(25), b"\x00" * 64, bytes([1, 2, 3]), random_frame(40)]
        async with SerialIntake(queue.put_nowait, pty.path) as intake:
            for frame in frames:
                pty.write(encode(frame))
            got = await received(queue, len(frames))
        pty.close()
        assert [r.frame for r in got] == frames
        assert {(r.path, r.receiver) for r in got} == {("serial", pty.path)}
        assert (intake.frames, intake.rejected) == (len(frames), 0)

    asyncio.run(main())


def test_noise_is_skipped_and_counted():
    async def main():
        pty = Pty()
        queue = asyncio.Queue()
        frames = [random_frame() for _ in range(4)]
        bad = frames[1] + bytes([(crc16(frames[1]) >> 8) ^ 0x10, crc16(frames[1]) & 0xFF])
        stream = (
            noise(40)                           # line noise before the first frame
            + encode(frames[0])
            + encode(random_frame())[:12] + b"\x00"  # a frame cut short
            + encode(frames[1])
            + b"\x00\x00\x00"                   # empty blocks: ignored, not counted
            + noise(3) + noise(200)             # short and oversize blocks
            + encode(frames[2])
            + cobs_encode(bad) + b"\x00"        # a flipped CRC byte
            + encode(frames[3])
        )
        async with SerialIntake(queue.put_nowait, pty.path, receiver="bus-1") as intake:
            pty.write(stream)
            got = await received(queue, len(frames))
            assert [r.frame for r in got] == frames
            assert got[0].receiver == "bus-1"
            assert (intake.frames, intake.rejected) == (4, 5)
            assert intake.last_error.reason == "checksum"
        pty.close()

    asyncio.run(main())


def test_frame_split_across_writes_arrives_once():
    async def main():
        pty = Pty()
        queue = asyncio.Queue()
        first, second = random_frame(), random_frame()
        async with SerialIntake(queue.put_nowait, pty.path) as intake:
            for b in encode(first):
                pty.write(bytes([b]))
                await asyncio.sleep(0.002)  # let the reader see each byte on its own
            pty.write(encode(second))
            got = await received(queue, 2)
            assert [r.frame for r in got] == [first, second]
            assert (intake.frames, intake.rejected) == (2, 0)
        pty.close()

    asyncio.run(main())


def test_send_writes_a_framed_frame():
    async def main():
        pty = Pty()
        frames = [random_frame(), b"\x00\x01\x00", random_frame(64)]
        async with SerialIntake(lambda r: None, pty.path) as intake:
            await asyncio.gather(*(intake.send(frame) for frame in frames))
            wire = b"".join(encode(frame) for frame in frames)
            assert await pty.read(len(wire)) == wire
        pty.close()

    asyncio.run(main())


@pytest.mark.parametrize("url, hint", [
    ("{tmp}/ttyNOPE", "no such device: plug in the radio"),
    ("nope://radio", "fix [serial] url in the config"),
])
def test_unopenable_port_is_one_clear_error(tmp_path, url, hint):
    url = url.format(tmp=tmp_path)

    async def main():
        with pytest.raises(IntakeUnavailable) as caught:
            async with SerialIntake(lambda r: None, url):
                pass
        message = str(caught.value)
        assert url in message and hint in message
        assert caught.value.__cause__ is None and caught.value.__suppress_context__

    asyncio.run(main())


def test_permission_denied_mentions_dialout(tmp_path, monkeypatch):
    device = tmp_path / "ttyS9"
    device.touch(mode=0o000)
    if os.geteuid() == 0:
        # Root opens any file, so raise exactly what pyserial's POSIX port raises on EACCES.
        def denied(url, **kwargs):
            err = PermissionError(errno.EACCES, "Permission denied", url)
            raise serial.SerialException(err.errno, "could not open port {}: {}".format(url, err))
        monkeypatch.setattr(serial, "serial_for_url", denied)

    async def main():
        with pytest.raises(IntakeUnavailable, match="dialout"):
            await SerialIntake(lambda r: None, str(device)).start()

    asyncio.run(main())


def test_socket_url_both_ways():
    async def main():
        queue = asyncio.Queue()
        frames = [random_frame() for _ in range(3)]
        async with LineServer() as server:
            async with SerialIntake(queue.put_nowait, server.url) as intake:
                reader, writer = await server.accept()
                writer.write(b"".join(encode(frame) for frame in frames))
                assert [r.frame for r in await received(queue, 3)] == frames
                await intake.send(frames[0])
                assert await asyncio.wait_for(reader.readexactly(len(encode(frames[0]))), TIMEOUT) \
                    == encode(frames[0])
                writer.close()

    asyncio.run(main())


class LogWatch(logging.Handler):
    """Records of the serial intake's logger, from any thread, into the test's event loop."""

    def __enter__(self):
        super().__init__(logging.DEBUG)
        self.seen = []
        self._queue = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._logger = logging.getLogger("ansim.agent.serial")
        self._logger.addHandler(self)
        self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc):
        self._logger.removeHandler(self)
        self._logger.setLevel(logging.NOTSET)

    def emit(self, record):
        self._loop.call_soon_threadsafe(self._queue.put_nowait, record)

    async def wait_for(self, text):
        """The next record whose message contains ``text``."""
        while True:
            self.seen.append(await asyncio.wait_for(self._queue.get(), TIMEOUT))
            if text in self.seen[-1].getMessage():
                return self.seen[-1]

    def messages(self, level):
        while not self._queue.empty():
            self.seen.append(self._queue.get_nowait())
        return [r.getMessage() for r in self.seen if r.levelno == level]


def test_socket_reconnects_after_the_server_drops():
    async def main():
        queue = asyncio.Queue()
        before, after = random_frame(), random_frame()
        with LogWatch() as logs:
            async with LineServer() as server:
                async with SerialIntake(queue.put_nowait, server.url) as intake:
                    _, writer = await server.accept()
                    writer.write(encode(before) + encode(random_frame())[:9])  # dropped mid-frame
                    assert (await received(queue, 1))[0].frame == before
                    writer.close()
                    reader, writer = await server.accept()
                    await logs.wait_for("reconnected")  # pyserial flushes input while it opens
                    writer.write(encode(after))
                    assert (await received(queue, 1))[0].frame == after
                    assert (intake.frames, intake.rejected) == (2, 1)
                    await intake.send(before)
                    assert await asyncio.wait_for(reader.readexactly(len(encode(before))), TIMEOUT) \
                        == encode(before)
                writer.close()
            assert [m.split(" (")[0] for m in logs.messages(logging.WARNING)] \
                == ["serial port %s lost" % server.url]

    asyncio.run(main())


def test_pty_unplugged_and_plugged_back(tmp_path):
    """The radio's stable name (like /dev/serial/by-id/...) is a symlink, moved to a new pty."""

    async def main():
        link = tmp_path / "radio"
        queue = asyncio.Queue()
        before, after = random_frame(), random_frame()
        old = Pty()
        link.symlink_to(old.path)
        with LogWatch() as logs:
            async with SerialIntake(queue.put_nowait, str(link)) as intake:
                old.write(encode(before))
                assert (await received(queue, 1))[0].frame == before
                link.unlink()  # as udev does on unplug; the old pts number is free for reuse
                old.close()
                await logs.wait_for("reopen failed")
                with pytest.raises(ConnectionError, match="not open"):
                    await intake.send(after)
                new = Pty()
                link.symlink_to(new.path)
                await logs.wait_for("reconnected")
                new.write(encode(after))
                assert (await received(queue, 1))[0].frame == after
                await intake.send(before)
                assert await new.read(len(encode(before))) == encode(before)
            new.close()
            assert len(logs.messages(logging.WARNING)) == 1

    asyncio.run(main())


def test_loop_url_hears_what_it_sends():
    """``loop://`` has no file descriptor to watch: the reason for a reader thread."""

    async def main():
        queue = asyncio.Queue()
        frame = random_frame()
        async with SerialIntake(queue.put_nowait, "loop://") as intake:
            await intake.send(frame)
            assert (await received(queue, 1))[0].frame == frame

    asyncio.run(main())
