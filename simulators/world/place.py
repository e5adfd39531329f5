"""Positions in a scenario: metres east/north of an origin, or lat/lon.

Why: a tester thinks in metres along a street ("the bell 30 m east"), the agent and the center
in WGS84. A flat-earth projection around the origin is exact to centimetres over the few
kilometres of a district block, and the same one the street simulator uses.
"""

import math

METRES_PER_DEG_LAT = 111_320.0


class Place:
    """The origin (lat, lon) of a scenario and the conversions around it."""

    def __init__(self, origin):
        self.origin = (float(origin[0]), float(origin[1]))
        self._per_deg_lon = METRES_PER_DEG_LAT * math.cos(math.radians(self.origin[0]))

    def latlon(self, east_m, north_m):
        """(lat, lon) of a point ``east_m`` east and ``north_m`` north of the origin."""
        return (round(self.origin[0] + north_m / METRES_PER_DEG_LAT, 7),
                round(self.origin[1] + east_m / self._per_deg_lon, 7))

    def metres(self, lat, lon):
        """(east, north) in metres of a (lat, lon) from the origin."""
        return ((lon - self.origin[1]) * self._per_deg_lon, (lat - self.origin[0]) * METRES_PER_DEG_LAT)

    def distance_m(self, a, b):
        """Distance between two (lat, lon) points, in metres."""
        (ax, ay), (bx, by) = self.metres(*a), self.metres(*b)
        return math.hypot(ax - bx, ay - by)


def along(path, fraction):
    """The point ``fraction`` (0..1) of the way along a polyline of (east, north) points."""
    legs = [(a, b, math.dist(a, b)) for a, b in zip(path, path[1:])]
    total = sum(length for _, _, length in legs)
    if total == 0:
        return tuple(path[0])
    remaining = max(0.0, min(1.0, fraction)) * total
    for a, b, length in legs:
        if remaining <= length and length:
            t = remaining / length
            return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)
        remaining -= length
    return tuple(path[-1])


def path_length(path):
    return sum(math.dist(a, b) for a, b in zip(path, path[1:]))
