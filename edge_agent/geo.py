"""Distances on the Earth's surface and nearest-neighbour queries over registered places.

A linear scan is enough: an agent serves one district (hundreds of lights and cameras), and
the query runs once per alert, not per frame.
"""

import math

EARTH_RADIUS_M = 6_371_008.8


def distance_m(a, b):
    """Great-circle (haversine) distance in metres between two (lat, lon) points."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def nearest(point, places, count):
    """The ``count`` places closest to ``point`` as (distance_m, place), nearest first."""
    return sorted(((distance_m(point, p.position), p) for p in places), key=lambda dp: dp[0])[:count]


def within(point, places, radius_m):
    """Places within ``radius_m`` of ``point`` as (distance_m, place), nearest first."""
    return [(d, p) for d, p in nearest(point, places, len(places)) if d <= radius_m]


# A log-distance path-loss model for 2.4 GHz in a street: RSSI at 1 m and the exponent are
# typical of a wearable's small antenna; the error of such estimates is large, and the
# accuracy we report says so.
RSSI_AT_1M = -59.0
PATH_LOSS_EXPONENT = 2.7
MIN_RADIUS_M = 10.0
MAX_RADIUS_M = 150.0


def model_distance_m(rssi, p0=RSSI_AT_1M, exponent=PATH_LOSS_EXPONENT):
    """The distance (at least 1 m) at which the log-distance model gives ``rssi`` dBm; no RSSI:
    as far as BLE reaches in a street."""
    if rssi is None:
        return MAX_RADIUS_M
    return max(1.0, 10 ** ((p0 - rssi) / (10 * exponent)))


def weighted_centroid(receivers, p0=RSSI_AT_1M, exponent=PATH_LOSS_EXPONENT):
    """Where receivers ``[(lat, lon, rssi or None)]`` that heard one transmission place it:
    their centroid, each weighted 1/d^2 with d the model distance of its RSSI (stronger =
    nearer = heavier). None without receivers."""
    weights = [1.0 / model_distance_m(rssi, p0, exponent) ** 2 for _, _, rssi in receivers]
    total = sum(weights)
    if not total:
        return None
    return (sum(w * r[0] for w, r in zip(weights, receivers)) / total,
            sum(w * r[1] for w, r in zip(weights, receivers)) / total)


def radius_from_rssi(rssi):
    """How far a transmitter probably is from the receiver that heard it at ``rssi`` dBm, as an
    accuracy radius: twice the model distance, bounded to 10-150 m (BLE range in a street)."""
    if rssi is None:
        return MAX_RADIUS_M
    distance = 10 ** ((RSSI_AT_1M - rssi) / (10 * PATH_LOSS_EXPONENT))
    return max(MIN_RADIUS_M, min(MAX_RADIUS_M, 2 * distance))
