"""BLE legacy advertisements that carry one ansim frame (SPEC.md, "BLE").

Layout: flags AD ``02 01 06`` then manufacturer-specific data ``LEN FF <company id> <frame>``:
at most 24 bytes of frame in the 31-byte legacy payload. The company id is a provisioning
setting (``company_id`` in a wearable's config, ``[ble] company_id`` in the agent's); its
default 0xFFFF is the Bluetooth SIG's id for tests, ``FF FF`` on air (little-endian, as every
Bluetooth field). The flags are optional for receivers; a zero-length AD structure ends the
data (SPEC.md 6.1).
"""

from .errors import ADVERTISEMENT, FrameError

COMPANY_ID = 0xFFFF  # the default: the Bluetooth SIG's test id
LEGACY_MAX = 31
FLAGS = b"\x02\x01\x06"
_MANUFACTURER = 0xFF
FRAME_MAX = LEGACY_MAX - len(FLAGS) - 4  # 24


def check_company_id(company_id):
    """``company_id`` as an int in 0..0xFFFF, or ValueError."""
    if isinstance(company_id, bool) or not isinstance(company_id, int) or not 0 <= company_id <= 0xFFFF:
        raise ValueError("a BLE company id is 0 to 0xFFFF (16 bits), not %r" % (company_id,))
    return company_id


def advertisement(frame, company_id=COMPANY_ID):
    """The advertising data bytes for ``frame`` (what ``gap_advertise(adv_data=...)`` takes)."""
    if len(frame) > FRAME_MAX:
        raise FrameError(ADVERTISEMENT, "frame of %d bytes exceeds the %d that fit a legacy advertisement"
                         % (len(frame), FRAME_MAX))
    return FLAGS + bytes([len(frame) + 3, _MANUFACTURER, company_id & 0xFF, company_id >> 8]) + frame


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


def frame_from_manufacturer_data(data, company_id=COMPANY_ID):
    """The frame inside manufacturer data that starts with the company id, or FrameError."""
    if len(data) < 2 or data[0] | (data[1] << 8) != company_id:
        raise FrameError(ADVERTISEMENT, "manufacturer data is not under company id 0x%04X" % company_id)
    if len(data) == 2:
        raise FrameError(ADVERTISEMENT, "manufacturer data under company id 0x%04X carries no frame" % company_id)
    return bytes(data[2:])


def frame_from_advertisement(adv, company_id=COMPANY_ID):
    """The ansim frame carried by raw advertising data under ``company_id``, or FrameError."""
    for ad_type, data in ad_structures(adv):
        if ad_type == _MANUFACTURER and len(data) >= 2 and data[0] | (data[1] << 8) == company_id:
            if len(data) == 2:  # 03 FF FF FF: no frame, not an empty one (SPEC.md 6.1)
                raise FrameError(ADVERTISEMENT, "manufacturer data under company id 0x%04X carries no frame"
                                 % company_id)
            return bytes(data[2:])
    raise FrameError(ADVERTISEMENT, "no manufacturer data under company id 0x%04X" % company_id)
