"""Authentication and encryption built on SHA-256 alone.

MicroPython on the ESP32 (and the unix port) has ``hashlib.sha256`` but no ``hmac`` module,
so HMAC-SHA256 (RFC 2104) is written here. On CPython the standard library's C ``hmac`` is
used instead for speed; the tests check that both give the same bytes.
"""

import hashlib
import struct

try:
    import hmac as _stdlib_hmac
except ImportError:  # MicroPython
    _stdlib_hmac = None

KEY_SIZE = 16
_BLOCK = 64


def hmac_sha256_portable(key, msg):
    """HMAC-SHA256 using only ``hashlib.sha256`` (what the devices run)."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key + bytes(_BLOCK - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


if _stdlib_hmac is not None and hasattr(_stdlib_hmac, "digest"):
    def hmac_sha256(key, msg):
        """HMAC-SHA256 (the C implementation of CPython's standard library)."""
        return _stdlib_hmac.digest(key, msg, "sha256")

    def equal(a, b):
        """Compare tags in constant time."""
        return _stdlib_hmac.compare_digest(a, b)
else:
    hmac_sha256 = hmac_sha256_portable

    def equal(a, b):
        """Compare tags in constant time (MicroPython has no ``compare_digest``)."""
        if len(a) != len(b):
            return False
        diff = 0
        for i in range(len(a)):
            diff |= a[i] ^ b[i]
        return diff == 0


def keystream(enc_key, iv, length):
    """SHA-256(enc_key || iv) truncated: a one-block PRF keystream (length <= 32)."""
    h = hashlib.sha256(enc_key)
    h.update(iv)
    return h.digest()[:length]


def xor(data, stream):
    return bytes(data[i] ^ stream[i] for i in range(len(data)))


class DeviceKeys:
    """Keys derived from one device's 16-byte master key (SPEC.md, "Keys").

    Each direction has its own authentication and encryption key, so a frame can never be
    reflected back as a valid frame of the other direction.
    """

    def __init__(self, master):
        if len(master) != KEY_SIZE:
            raise ValueError("device key must be %d bytes, got %d" % (KEY_SIZE, len(master)))
        self.up_auth = _subkey(master, b"up auth")
        self.up_enc = _subkey(master, b"up enc")
        self.down_auth = _subkey(master, b"down auth")
        self.down_enc = _subkey(master, b"down enc")
        self.rid = _subkey(master, b"rid")

    def auth(self, downlink):
        return self.down_auth if downlink else self.up_auth

    def enc(self, downlink):
        return self.down_enc if downlink else self.up_enc


def _subkey(master, label):
    return hmac_sha256(master, b"ansim-v1 " + label)


ROTATION_PERIOD_S = 600
RID_SIZE = 5
# Epochs from here on are not times: a wearable whose clock is not set counts its n-th start
# without a clock as epoch CLOCKLESS + n (SPEC.md 3.2), so its frames are never taken for
# frames made at some time.
CLOCKLESS = 0x80000000


def epoch_of(unix_time):
    """Rotation epoch index of a Unix time in seconds (UTC)."""
    return int(unix_time) // ROTATION_PERIOD_S


def rotating_id(keys, epoch):
    """The wearable's public identifier during ``epoch``: HMAC(k_rid, epoch)[:5]."""
    return hmac_sha256(keys.rid, struct.pack(">I", epoch))[:RID_SIZE]
