"""Position from a GNSS receiver's NMEA 0183 sentences (GGA and RMC, any talker: GP, GN, GL...).

MicroPython has no NMEA library small enough for a wearable, so this reads just what the SOS
frame needs: latitude, longitude and an accuracy in metres. Sentences whose checksum is wrong
or missing, or that report no fix, are ignored; a fix older than ``max_age_ms`` is not given.
"""

import time

UERE_M = 5  # typical user range error: accuracy ~ HDOP x 5 m (1 sigma)
RMC_ACCURACY_M = 25  # RMC has no HDOP: a plain autonomous fix


def _checksum_ok(line):
    star = line.rfind("*")
    if not line.startswith("$") or star < 0 or len(line) < star + 3:
        return False
    total = 0
    for ch in line[1:star]:
        total ^= ord(ch)
    try:
        return total == int(line[star + 1:star + 3], 16)
    except ValueError:
        return False


def _degrees(value, hemisphere, width):
    """ddmm.mmmm / dddmm.mmmm and N/S/E/W -> signed decimal degrees (None if malformed)."""
    if not hemisphere or hemisphere not in "NSEW" or len(value) < width + 2:
        return None
    try:
        degrees = int(value[:width]) + float(value[width:]) / 60
    except ValueError:
        return None
    return -degrees if hemisphere in "SW" else degrees


def parse(line):
    """``(lat, lon, accuracy_m)`` from one GGA or RMC sentence with a fix, else None."""
    line = line.strip()
    if not _checksum_ok(line):
        return None
    fields = line[1:line.rfind("*")].split(",")
    kind = fields[0][2:]
    if kind == "GGA" and len(fields) >= 9:
        if fields[6] in ("", "0"):
            return None  # fix quality 0: no fix
        lat, lon = _degrees(fields[2], fields[3], 2), _degrees(fields[4], fields[5], 3)
        try:
            accuracy = int(float(fields[8]) * UERE_M + 0.5)
        except ValueError:
            accuracy = RMC_ACCURACY_M
    elif kind == "RMC" and len(fields) >= 7:
        if fields[2] != "A":
            return None  # V: warning, no valid fix
        lat, lon = _degrees(fields[3], fields[4], 2), _degrees(fields[5], fields[6], 3)
        accuracy = RMC_ACCURACY_M
    else:
        return None
    if lat is None or lon is None or not -90 <= lat <= 90 or not -180 <= lon <= 180:
        return None
    return lat, lon, max(1, min(255, accuracy))


class Receiver:
    """Keeps the newest fix read from a UART (``machine.UART``) that delivers NMEA lines."""

    def __init__(self, uart, max_age_ms=120000):
        self.uart = uart
        self.max_age_ms = max_age_ms
        self._fix = None
        self._at = 0
        self._partial = b""

    def poll(self):
        """Read whatever the UART holds; never blocks."""
        while self.uart.any():
            chunk = self.uart.read(self.uart.any())
            if not chunk:
                return
            self._partial += chunk
            while b"\n" in self._partial:
                line, self._partial = self._partial.split(b"\n", 1)
                try:
                    fix = parse(line.decode())
                except UnicodeError:
                    fix = None
                if fix is not None:
                    self._fix, self._at = fix, time.ticks_ms()
            if len(self._partial) > 120:  # no NMEA sentence is this long: noise, resync
                self._partial = b""

    def fix(self):
        """The newest ``(lat, lon, accuracy_m)`` if fresh, else None."""
        self.poll()
        if self._fix is None or time.ticks_diff(time.ticks_ms(), self._at) > self.max_age_ms:
            return None
        return self._fix
