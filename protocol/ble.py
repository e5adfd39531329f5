"""BLE legacy advertisements that carry one ansim frame (SPEC.md, "BLE").

Layout: flags AD ``02 01 06`` then manufacturer-specific data ``LEN FF FF FF <frame>`` under
the test company id 0xFFFF (little-endian on air, as every Bluetooth field): at most 24 bytes
of frame in the 31-byte legacy payload. The flags are optional for receivers; a zero-length
AD structure ends the data (SPEC.md 6.1).
"""

from .errors import ADVERTISEMENT, FrameError

COMPANY_ID = 0xFFFF
LEGACY_MAX = 31
FLAGS = b"\x02\x01\x06"
_MANUFACTURER = 0xFF
FRAME_MAX = LEGACY_MAX - len(FLAGS) - 4  # 24


def advertisement(frame):
    """The advertising data bytes for ``frame`` (what ``gap_advertise(adv_data=...)`` takes)."""
    if len(frame) > FRAME_MAX:
        raise FrameError(ADVERTISEMENT, "frame of %d bytes exceeds the %d that fit a legacy advertisement"
                         % (len(frame), FRAME_MAX))
    return FLAGS + bytes([len(frame) + 3, _MANUFACTURER, COMPANY_ID & 0xFF, COMPANY_ID >> 8]) + frame


def ad_structures(adv):
    """Split advertising data into (ad_type, data) pairs; raises FrameError if malformed."""
    if len(adv) > LEGACY_MAX:
        raise FrameError(ADVERTISEMENT, "advertising data of %d bytes exceeds %d" % (len(adv), LEGACY_MAX))
    out = []
    pos = 0
    while pos < len(adv):
        size = adv[pos]
        if size == 0:  # early terminator: the rest is padding
            break
        if pos + 1 + size > len(adv):
            raise FrameError(ADVERTISEMENT, "AD structure at byte %d runs past the end" % pos)
        out.append((adv[pos + 1], bytes(adv[pos + 2:pos + 1 + size])))
        pos += 1 + size
    return out


def frame_from_manufacturer_data(data):
    """The frame inside manufacturer data that starts with the company id, or FrameError."""
    if len(data) < 2 or data[0] | (data[1] << 8) != COMPANY_ID:
        raise FrameError(ADVERTISEMENT, "manufacturer data is not under company id 0x%04X" % COMPANY_ID)
    return bytes(data[2:])


def frame_from_advertisement(adv):
    """The ansim frame carried by raw advertising data, or FrameError."""
    for ad_type, data in ad_structures(adv):
        if ad_type == _MANUFACTURER and len(data) >= 2 and data[0] | (data[1] << 8) == COMPANY_ID:
            return bytes(data[2:])
    raise FrameError(ADVERTISEMENT, "no manufacturer data under company id 0x%04X" % COMPANY_ID)
