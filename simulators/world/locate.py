"""Where several receivers place a wearable without a fix: an RSSI-weighted centroid.

Why: an alert's ``receiver`` location is one agent's own position, as far off as that agent
is from the wearable. When several agents heard the same frame (the alert and their
``heard`` reports share one alert_id), their positions weighted by signal strength give a
better estimate. The weight is 1/d^2 with d the path-loss model's distance for the RSSI
(stronger = nearer = heavier); with one receiver the estimate is its position.
"""

from .radio_model import EXPONENT, P0_DBM


def weight(rssi, p0=P0_DBM, exponent=EXPONENT):
    distance = max(1.0, 10 ** ((p0 - rssi) / (10 * exponent)))
    return 1.0 / distance ** 2


def fuse(receptions, p0=P0_DBM, exponent=EXPONENT):
    """(lat, lon) from ``receptions``: (lat, lon, rssi) of each receiver that heard the frame
    (several reports of one receiver may be given: each counts). None when there are none;
    a reception without RSSI weighs as one at the sensitivity limit."""
    total = lat = lon = 0.0
    for r_lat, r_lon, rssi in receptions:
        w = weight(-95 if rssi is None else rssi, p0, exponent)
        total += w
        lat += w * r_lat
        lon += w * r_lon
    if not total:
        return None
    return (lat / total, lon / total)
