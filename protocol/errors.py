"""The single error type that every ansim decoder raises, whatever the input.

Callers switch on ``reason`` (a short, stable word listed in SPEC.md), not on the message,
which is for people.
"""

SHORT = "short"          # empty input, or a plain frame under 18 bytes
LENGTH = "length"        # sealed frame not 24 bytes, or plain body size not its type's
VERSION = "version"      # protocol version this implementation does not speak
ENVELOPE = "envelope"    # unknown envelope code in the header
TYPE = "type"            # unknown frame type
DIRECTION = "direction"  # frame type not allowed in this direction or envelope
TAG = "tag"              # authentication failed (wrong key, tampered or corrupted frame)
VALUE = "value"          # counter 0, a field out of range, an unknown enum code, bad padding
REPLAY = "replay"        # counter not above the last accepted one
CHECKSUM = "checksum"    # serial-line CRC mismatch
FRAMING = "framing"      # serial-line COBS block malformed, over 67 bytes, or under 3 decoded
ADVERTISEMENT = "advertisement"  # BLE advertising data malformed or without an ansim frame
TOPIC = "topic"          # MQTT topic outside the ansim scheme
UNKNOWN = "unknown"      # device id or rotating id not in the receiver's registry

REASONS = (SHORT, LENGTH, VERSION, ENVELOPE, TYPE, DIRECTION, TAG, VALUE, REPLAY,
           CHECKSUM, FRAMING, ADVERTISEMENT, TOPIC, UNKNOWN)


class FrameError(ValueError):
    """A frame, advertisement, serial block or topic was rejected.

    ``reason`` is one of ``REASONS``; ``str(err)`` is a one-line explanation for a person.
    """

    def __init__(self, reason, detail):
        super().__init__(reason + ": " + detail)
        self.reason = reason
        self.detail = detail
