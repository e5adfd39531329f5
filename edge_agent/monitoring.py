"""Walk-home monitoring (귀가모니터링): the center watches someone walk a route; the lights
ahead of them brighten and the ones they have passed go back to their schedule.

A route is a polyline of (lat, lon) points. Each streetlight within ``corridor_m`` of it gets
a position along the route; the walker's position is projected the same way. Lights from the
walker's position to ``ahead_m`` further on are bright; lights behind are restored.
"""

import math

from .geo import EARTH_RADIUS_M


class Route:
    def __init__(self, points):
        if len(points) < 2:
            raise ValueError("a route needs at least two points")
        self.origin = points[0]
        self._cos = math.cos(math.radians(self.origin[0]))
        self.xy = [self._project(p) for p in points]
        self.starts = [0.0]
        for a, b in zip(self.xy, self.xy[1:]):
            self.starts.append(self.starts[-1] + math.dist(a, b))

    @property
    def length_m(self):
        return self.starts[-1]

    def _project(self, point):
        """Metres east and north of the route's first point (flat earth: a walk is short)."""
        return (math.radians(point[1] - self.origin[1]) * EARTH_RADIUS_M * self._cos,
                math.radians(point[0] - self.origin[0]) * EARTH_RADIUS_M)

    def locate(self, point):
        """(metres along the route, metres off it) of the nearest point of the route."""
        p = self._project(point)
        best = (float("inf"), 0.0)
        for i, (a, b) in enumerate(zip(self.xy, self.xy[1:])):
            seg = (b[0] - a[0], b[1] - a[1])
            length2 = seg[0] ** 2 + seg[1] ** 2
            t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((p[0] - a[0]) * seg[0] + (p[1] - a[1]) * seg[1]) / length2))
            foot = (a[0] + t * seg[0], a[1] + t * seg[1])
            off = math.dist(p, foot)
            if off < best[0]:
                best = (off, self.starts[i] + t * math.sqrt(length2))
        return best[1], best[0]


class Session:
    """One monitored walk: which lights line the route, and which are bright now."""

    def __init__(self, session_id, route, lights, corridor_m, ahead_m):
        self.session_id = session_id
        self.route = route
        self.ahead_m = ahead_m
        self.along = {}  # light device_id -> metres along the route
        for light in lights:
            along, off = route.locate(light.position)
            if off <= corridor_m:
                self.along[light.device_id] = along
        self.bright = set()
        self.progress = 0.0

    def move(self, position):
        """The walker is at ``position``: returns (to_brighten, to_restore) light ids."""
        if position is not None:
            self.progress = max(self.progress, self.route.locate(position)[0])  # no walking back into lit lights
        wanted = {i for i, a in self.along.items() if self.progress - 5.0 <= a <= self.progress + self.ahead_m}
        to_brighten, to_restore = wanted - self.bright, self.bright - wanted
        self.bright = wanted
        return sorted(to_brighten), sorted(to_restore)

    def end(self):
        """Every light this session brightened goes back to its schedule."""
        restore, self.bright = sorted(self.bright), set()
        return restore
