"""What each receiver hears of a wearable: a log-distance path-loss model with shadowing.

Why: with one RSSI per advertiser every agent hears a wearable equally well, so nothing that
depends on who is near (which agent hears it, where several receivers place it) can be
tested. RSSI = P0 - 10 n log10(d / d0) + N(0, sigma); below the receiver's sensitivity the
advertisement is not heard at all. The noise comes from a seeded RNG, so a scenario run is
reproducible; each report draws anew, as a real channel fades from packet to packet.
"""

import math
import random

P0_DBM = -59.0       # at d0 = 1 m: a wearable's small antenna (edge_agent/geo.py assumes the same)
EXPONENT = 2.2       # a street, mostly line of sight (2 in free space)
SIGMA_DB = 4.0       # shadowing
SENSITIVITY_DBM = -100.0  # a BLE 5 receiver at 1 Mb/s: range about 70 m on average
MIN_DISTANCE_M = 1.0


class PathLoss:
    def __init__(self, p0=P0_DBM, exponent=EXPONENT, sigma=SIGMA_DB, sensitivity=SENSITIVITY_DBM, seed=0):
        self.p0, self.exponent, self.sigma, self.sensitivity = p0, exponent, sigma, sensitivity
        self._rng = random.Random(seed)

    def mean(self, distance_m):
        """The RSSI without noise at ``distance_m``."""
        return self.p0 - 10 * self.exponent * math.log10(max(MIN_DISTANCE_M, distance_m))

    def rssi(self, distance_m):
        """One report's RSSI (an int, as controllers report it), or None: not heard."""
        value = self.mean(distance_m) + (self._rng.gauss(0.0, self.sigma) if self.sigma else 0.0)
        return None if value < self.sensitivity else int(round(value))

    def distance(self, rssi):
        """The model's distance for an RSSI (its inverse without noise)."""
        return 10 ** ((self.p0 - rssi) / (10 * self.exponent))

    def range_m(self):
        """Where the mean RSSI falls to the sensitivity."""
        return self.distance(self.sensitivity)
