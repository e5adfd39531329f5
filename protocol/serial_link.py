"""Serial-line framing: COBS blocks ending in 0x00, each frame followed by a CRC-16.

A byte stream from a UART radio or a wired bell bus can start mid-frame or carry noise;
COBS makes 0x00 a delimiter that never occurs inside a block, so the reader resynchronises
at the next 0x00 whatever came before. CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF)
catches line errors before the frame's tag is even checked. Written here because
MicroPython has no COBS library.
"""

from .errors import CHECKSUM, FRAMING, FrameError

try:
    from binascii import crc_hqx as _crc_hqx  # CPython: C implementation of the same CRC
except ImportError:
    _crc_hqx = None

DELIMITER = 0
FRAME_MAX = 64
# COBS adds 1 byte per started run of 254: a 64-byte frame and its CRC (66 bytes) make 67.
BLOCK_MAX = FRAME_MAX + 2 + 1 + (FRAME_MAX + 2) // 254


def crc16(data):
    """CRC-16/CCITT-FALSE of ``data``."""
    if _crc_hqx is not None:
        return _crc_hqx(data, 0xFFFF)
    crc = 0xFFFF
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        crc &= 0xFFFF
    return crc


def cobs_encode(data):
    out = bytearray(b"\x00")
    code_pos = 0
    for b in data:
        if b == 0:
            out[code_pos] = len(out) - code_pos
            code_pos = len(out)
            out.append(0)
        else:
            out.append(b)
            if len(out) - code_pos == 0xFF:
                out[code_pos] = 0xFF
                code_pos = len(out)
                out.append(0)
    out[code_pos] = len(out) - code_pos
    return bytes(out)


def cobs_decode(block):
    out = bytearray()
    pos = 0
    while pos < len(block):
        code = block[pos]
        if code == 0 or pos + code > len(block):
            raise FrameError(FRAMING, "COBS code %d at byte %d overruns the block" % (code, pos))
        chunk = block[pos + 1:pos + code]
        if DELIMITER in chunk:
            raise FrameError(FRAMING, "zero byte inside a COBS block")
        out += chunk
        pos += code
        if code != 0xFF and pos < len(block):
            out.append(0)
    return bytes(out)


def encode(frame):
    """Bytes to write to the line for one frame."""
    if len(frame) > FRAME_MAX:
        raise FrameError(FRAMING, "frame of %d bytes exceeds %d" % (len(frame), FRAME_MAX))
    crc = crc16(frame)
    return cobs_encode(frame + bytes([crc >> 8, crc & 0xFF])) + b"\x00"


def decode_block(block):
    """One COBS block (without its delimiter) to a frame; raises FrameError."""
    if len(block) > BLOCK_MAX:
        raise FrameError(FRAMING, "block of %d bytes is longer than any frame" % len(block))
    data = cobs_decode(block)
    if len(data) < 3:
        raise FrameError(FRAMING, "block of %d bytes holds no frame" % len(data))
    frame, crc = data[:-2], (data[-2] << 8) | data[-1]
    if crc16(frame) != crc:
        raise FrameError(CHECKSUM, "CRC 0x%04x, frame says 0x%04x" % (crc16(frame), crc))
    return frame


class Deframer:
    """Turns an arbitrary byte stream into frames, skipping what cannot be one.

    ``feed`` never raises: rejected blocks are counted in ``rejected`` (and per reason in
    ``rejected_by_reason``) with the last error in ``last_error``, so that line noise cannot
    stop a reader.
    """

    def __init__(self):
        self._buf = bytearray()
        self._overflow = False
        self.rejected = 0
        self.rejected_by_reason = {}  # "framing" / "checksum" -> count, for metrics
        self.last_error = None

    def feed(self, data):
        frames = []
        for b in data:
            if b != DELIMITER:
                if len(self._buf) < BLOCK_MAX:
                    self._buf.append(b)
                else:
                    self._overflow = True
                continue
            if self._overflow:
                self._reject(FrameError(FRAMING, "no delimiter within %d bytes" % BLOCK_MAX))
            elif self._buf:
                try:
                    frames.append(decode_block(bytes(self._buf)))
                except FrameError as err:
                    self._reject(err)
            self._buf = bytearray()
            self._overflow = False
        return frames

    def _reject(self, err):
        self.rejected += 1
        self.rejected_by_reason[err.reason] = self.rejected_by_reason.get(err.reason, 0) + 1
        self.last_error = err
