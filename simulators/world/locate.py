"""Where several receivers place a wearable without a fix: an RSSI-weighted centroid.

Why: an alert's ``receiver`` location is one agent's own position, as far off as that agent
is from the wearable. When several agents heard the same frame (the alert and their
``heard`` reports share one alert_id), their positions weighted by signal strength give a
better estimate. The centroid is the console's (``edge_agent/geo.weighted_centroid``), with
the virtual air's own path-loss model, which a scenario knows to be the truth.
"""

from ansim_agent.geo import weighted_centroid

from .radio_model import EXPONENT, P0_DBM


def fuse(receptions):
    """(lat, lon) from ``receptions``: (lat, lon, rssi) of each receiver that heard the frame
    (several reports of one receiver each count). None when there are none."""
    return weighted_centroid(receptions, P0_DBM, EXPONENT)
