"""The map's static layer from the site's registry (the ``registry.toml`` the agent reads):
devices with a position, cameras and safety facilities.

The entries are checked by the agent's own code (edge_agent/registry.py), so a registry the
agent takes is read the same way here, with the same one-line errors. Only the key files are
not read: the center needs no device keys, and should not hold them.
"""

from pathlib import Path

from ansim_agent import registry
from ansim_agent.config import ConfigError, read_toml

__all__ = ["ConfigError", "load"]


def load(path) -> dict:
    """``{"devices": [...], "cameras": [...], "facilities": [...]}``, each entry with ``id``,
    ``name``, ``lat``, ``lon`` (devices: ``role``; facilities: ``kind``); ConfigError for a bad file."""
    path = Path(path)
    raw = read_toml(path, "give --registry the site's registry.toml (ansim provision writes it)")
    for table, entries in raw.items():
        if table not in registry.TABLES:
            raise ConfigError("%s: %s: unknown table: the registry holds %s"
                              % (path, table, ", ".join("[[%s]]" % t for t in registry.TABLES)))
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ConfigError("%s: %s: must be an array of tables: write [[%s]] above each entry's keys"
                              % (path, table, table))
    devices = []
    for i, entry in enumerate(raw.get("device", [])):
        where = "%s: [[device]] #%d" % (path, i + 1)
        ident = entry.get("id")
        if not isinstance(ident, str) or len(ident) != 8 or ident.strip("0123456789abcdef"):
            raise ConfigError("%s id: must be 8 lowercase hex digits, got %r" % (where, ident))
        role = entry.get("role")
        if role not in registry.ROLES:
            raise ConfigError("%s (%s) role: must be one of %s, got %r" % (where, ident, ", ".join(registry.ROLES), role))
        device = {"id": ident, "role": role, "name": str(entry.get("name", "%s %s" % (role, ident)))}
        if "position" in entry:
            device["lat"], device["lon"] = registry._position(entry["position"], "%s (%s)" % (where, ident))
        devices.append(device)
    cameras = [_place(registry._place(e, "camera", "%s: [[camera]] #%d" % (path, i + 1)))
               for i, e in enumerate(raw.get("camera", []))]
    facilities = [_place(registry._place(e, e.get("kind"), "%s: [[facility]] #%d" % (path, i + 1)))
                  for i, e in enumerate(raw.get("facility", []))]
    return {"path": str(path), "devices": devices, "cameras": cameras, "facilities": facilities}


def _place(place):
    return {"id": place.ident, "kind": place.kind, "name": place.name,
            "lat": place.position[0], "lon": place.position[1]}
