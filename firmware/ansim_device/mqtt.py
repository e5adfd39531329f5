"""A minimal MQTT 3.1.1 client for MicroPython on asyncio streams (SPEC.md 6.2).

Why written here: paho does not run on MicroPython, and micropython-lib's ``umqtt.simple`` /
``umqtt.robust`` are blocking (a streetlight must keep blinking while it waits for the broker)
and cannot be installed with ``mip`` on an offline site. What a bell or streetlight needs is
small: CONNECT with a client id, keepalive, a last will and a user name and password (the
Pi's mosquitto refuses anonymous clients); QoS 0/1 PUBLISH (QoS 1 waits for
its PUBACK); SUBSCRIBE; receiving QoS 0/1 publishes (PUBACK sent); PINGREQ; reconnection with
exponential backoff. No QoS 2, no persistent session (clean session: commands that arrive
while a device is offline would be stale anyway), no TLS.

Incoming packets longer than ``MAX_PACKET`` are read and thrown away ``CHUNK`` bytes at a time,
never held: a 1 MB publish on a light's down topic once raised MemoryError and took the link
down (the light fell back to its schedule for 15 s). A QoS 1 one is still acknowledged.

Every wait has a timeout. MicroPython quirk: ``asyncio.wait_for(asyncio.sleep(x), t)`` does
not time out properly; wrap a sleep in an ``async def`` before giving it to ``wait_for``.
"""

import asyncio
import struct

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0
# Remaining length accepted (the whole packet after its fixed header): a downlink frame is at
# most 64 bytes and a topic under 40, so 256 is room to spare; anything longer is drained.
MAX_PACKET = 256
# Bytes read at a time while draining an oversize packet, into one buffer kept for it. Each read
# (a wait_for) makes ~1.7 KB of short-lived garbage in asyncio: 64-byte reads cost 28 MB of
# allocation and 256 ms per MB on the unix VM, 256-byte reads 7 MB and 56 ms.
CHUNK = 256
CONNACK_ERRORS = {1: "bad protocol version", 2: "client id rejected", 3: "server unavailable",
                  4: "bad user name or password", 5: "not authorised"}
REFUSED_LOGIN = (4, 5)  # retrying soon cannot help: the broker's passwd or this config must change


class MQTTError(Exception):
    pass


class Refused(MQTTError):
    """CONNACK refused the login: ``args[0]`` is its return code, 4 or 5."""


def _str(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack(">H", len(s)) + s


def _packet(kind, body):
    """Fixed header (type byte, variable-length remaining length) + body."""
    out = bytearray([kind])
    n = len(body)
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            break
    return bytes(out) + body


async def _sleep(seconds):
    await asyncio.sleep(seconds)


class MQTTClient:
    """``client.run()`` keeps a connection up forever; ``on_connect`` (async, no args) runs
    after each CONNACK (subscribe there); ``on_message(topic, payload)`` (sync) gets every
    publish. ``connected`` tells whether the link is up. ``username`` and ``password`` (str or
    bytes, or None) go into CONNECT; a broker that refuses them (CONNACK 4 or 5) is tried again
    only every ``backoff_max`` seconds, with a console line saying why."""

    def __init__(self, client_id, host, port=1883, keepalive=30, will=None, on_message=None,
                 on_connect=None, on_disconnect=None, timeout=5, backoff_max=30, username=None,
                 password=None):
        self.client_id = client_id
        self.username, self.password = username, password
        self.host, self.port = host, port
        self.keepalive = keepalive
        self.will = will  # (topic, payload, retain, qos)
        self.on_message = on_message or (lambda topic, payload: None)
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.timeout = timeout
        self.backoff_max = backoff_max
        self.connected = False
        self.connects = 0
        self.dropped = 0  # oversize packets drained unread
        self._chunk = memoryview(bytearray(CHUNK))
        self._reader = self._writer = None
        self._lock = asyncio.Lock()
        self._pid = 0
        self._pending = {}  # packet id -> asyncio.Event (PUBACK / SUBACK)
        self._lost = asyncio.Event()

    # -- packets --------------------------------------------------------------------------
    def _next_pid(self):
        self._pid = self._pid % 0xFFFF + 1
        return self._pid

    async def _send(self, data):
        if self._writer is None:
            raise MQTTError("not connected")
        await asyncio.wait_for(self._lock.acquire(), self.timeout)
        try:
            self._writer.write(data)
            await asyncio.wait_for(self._writer.drain(), self.timeout)
        finally:
            self._lock.release()

    async def _read_packet(self, timeout):
        """(type byte, body) of the next packet, body None for one longer than MAX_PACKET (drained,
        not kept); EOFError/OSError/TimeoutError on a dead link."""
        r = self._reader
        head = await asyncio.wait_for(r.readexactly(1), timeout)
        n, shift = 0, 0
        while True:
            b = (await asyncio.wait_for(r.readexactly(1), self.timeout))[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MQTTError("bad remaining length")
        if n > MAX_PACKET:
            await self._drop(head[0], n)
            return head[0], None
        body = await asyncio.wait_for(r.readexactly(n), self.timeout) if n else b""
        return head[0], body

    async def _skip(self, n):
        """Read and forget ``n`` bytes, CHUNK at a time into the one buffer."""
        r, buf = self._reader, self._chunk
        while n:
            got = await asyncio.wait_for(r.readinto(buf if n >= CHUNK else buf[:n]), self.timeout)
            if got == 0:
                raise EOFError
            n -= got or 0  # None: nothing there yet

    async def _drop(self, kind, n):
        """Drain an oversize packet of remaining length ``n``; for a QoS 1 PUBLISH read just the
        topic length, skip the topic, keep the packet id that follows it, and PUBACK it."""
        size, pid = n, None
        if kind & 0xF6 == PUBLISH | 0x02:
            t = struct.unpack(">H", await asyncio.wait_for(self._reader.readexactly(2), self.timeout))[0]
            n -= 2
            if t + 2 <= n:
                await self._skip(t)
                pid = await asyncio.wait_for(self._reader.readexactly(2), self.timeout)
                n -= t + 2
        await self._skip(n)
        self.dropped += 1
        print("mqtt: dropped an oversize packet (type 0x%02x, %d bytes > %d; %d so far)"
              % (kind, size, MAX_PACKET, self.dropped))
        if pid is not None:
            await self._send(_packet(PUBACK, pid))

    # -- connection -----------------------------------------------------------------------
    async def connect(self):
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.timeout)
        flags = 0x02  # clean session
        payload = _str(self.client_id)
        if self.will:
            topic, message, retain, qos = self.will
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            payload += _str(topic) + _str(message)
        if self.username is not None:  # MQTT 3.1.1 3.1.2.8-9: a password only with a user name
            flags |= 0x80
            payload += _str(self.username)
            if self.password is not None:
                flags |= 0x40
                payload += _str(self.password)
        body = _str(b"MQTT") + bytes([4, flags]) + struct.pack(">H", self.keepalive) + payload
        await self._send(_packet(CONNECT, body))
        kind, body = await self._read_packet(self.timeout)
        if kind != CONNACK or not body or len(body) != 2:
            raise MQTTError("expected CONNACK, got type 0x%02x" % kind)
        if body[1] in REFUSED_LOGIN:
            raise Refused(body[1])
        if body[1]:
            raise MQTTError("connection refused: %s" % CONNACK_ERRORS.get(body[1], body[1]))
        self._lost = asyncio.Event()
        self.connected = True
        self.connects += 1

    async def publish(self, topic, payload, retain=False, qos=1):
        """Send; for QoS 1 wait for the PUBACK (MQTTError / TimeoutError if none in time)."""
        if not self.connected:
            raise MQTTError("not connected")
        if isinstance(payload, str):
            payload = payload.encode()
        if qos == 0:
            await self._send(_packet(PUBLISH | (0x01 if retain else 0), _str(topic) + payload))
            return
        await self._request(PUBLISH | 0x02 | (0x01 if retain else 0),
                            _str(topic), payload)

    async def _request(self, kind, head, tail):
        """Send a packet with a fresh packet id between ``head`` and ``tail``; wait for its
        acknowledgement (PUBACK/SUBACK); returns the SUBACK's granted QoS."""
        pid = self._next_pid()
        entry = self._pending[pid] = [asyncio.Event(), 0]
        try:
            await self._send(_packet(kind, head + struct.pack(">H", pid) + tail))
            await asyncio.wait_for(entry[0].wait(), self.timeout)
        finally:
            self._pending.pop(pid, None)
        if not self.connected:
            raise MQTTError("link lost before the acknowledgement")
        return entry[1]

    async def subscribe(self, topic, qos=1):
        if await self._request(SUBSCRIBE, b"", _str(topic) + bytes([qos])) == 0x80:
            raise MQTTError("subscription to %s refused" % topic)

    async def ping(self):
        await self._send(_packet(PINGREQ, b""))

    async def disconnect(self):
        try:
            await self._send(_packet(DISCONNECT, b""))
        except Exception:
            pass
        self._close()

    def _close(self):
        was = self.connected
        self.connected = False
        w, self._writer, self._reader = self._writer, None, None
        if w is not None:
            try:
                w.close()
            except Exception:
                pass
        for entry in self._pending.values():
            entry[0].set()  # waiters see connected False and raise
        self._lost.set()
        if was and self.on_disconnect:
            self.on_disconnect()

    # -- the loops ------------------------------------------------------------------------
    async def _receive(self):
        """Read packets until the link dies. Silence beyond 1.5 keepalives means dead."""
        while True:
            kind, body = await self._read_packet(self.keepalive * 3 // 2 + 1)
            if body is None:
                continue  # oversize: drained and counted
            t = kind & 0xF0
            if t == PUBLISH:
                qos = (kind >> 1) & 3
                n = struct.unpack(">H", body[:2])[0]
                topic = body[2:2 + n].decode()
                pos = 2 + n
                if qos:
                    pid = struct.unpack(">H", body[pos:pos + 2])[0]
                    pos += 2
                    await self._send(_packet(PUBACK, struct.pack(">H", pid)))
                try:
                    self.on_message(topic, body[pos:])
                except Exception as e:  # a bad handler must not take the link down
                    print("mqtt: on_message failed:", repr(e))
            elif t == PUBACK or t == SUBACK:
                pid = struct.unpack(">H", body[:2])[0]
                entry = self._pending.get(pid)
                if entry is not None:
                    entry[1] = body[2] if t == SUBACK and len(body) > 2 else 0
                    entry[0].set()
            # PINGRESP and anything else: reading it was the point (the link is alive)

    async def _receive_until_lost(self):
        try:
            await self._receive()
        except Exception as e:  # noqa: B902 (EOF, reset, timeout: the link is gone)
            print("mqtt: receive ended: %r" % (e,))
        finally:
            self._close()

    async def _pinger(self):
        while self.connected:
            try:
                await asyncio.wait_for(self._lost.wait(), self.keepalive / 2)
                return
            except asyncio.TimeoutError:
                pass
            try:
                await self.ping()
            except Exception:
                self._close()
                return

    async def run(self):
        """Connect, serve, and reconnect with exponential backoff (1 s doubling to backoff_max)."""
        backoff = 1
        while True:
            try:
                await self.connect()
                backoff = 1
                receiver = asyncio.create_task(self._receive_until_lost())
                pinger = asyncio.create_task(self._pinger())
                try:
                    if self.on_connect:
                        await self.on_connect()
                    while self.connected:
                        try:
                            await asyncio.wait_for(self._lost.wait(), 60)
                        except asyncio.TimeoutError:
                            pass
                    print("mqtt: link to %s:%d lost" % (self.host, self.port))
                finally:
                    self._close()
                    receiver.cancel()
                    pinger.cancel()
            except Refused as e:  # wrong credentials: a person must act, retrying fast cannot help
                backoff = self.backoff_max
                print("mqtt: %s:%d refused %s as %s: %s: check the broker's passwd and acl against this "
                      "device's config.json (ansim provision, ansim flash); retry in %d s"
                      % (self.host, self.port, self.client_id, self.username, CONNACK_ERRORS[e.args[0]], backoff))
            except Exception as e:  # noqa: B902 (any failure: retry later)
                print("mqtt: link to %s:%d down: %r; retry in %d s" % (self.host, self.port, e, backoff))
            self._close()
            await _sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max)
