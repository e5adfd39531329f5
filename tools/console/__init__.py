"""``ansim center``: the control-center console.

It connects to the center's MQTT broker as the center does (edge_agent/CENTER_API.md), keeps
what arrives in a :class:`~.model.Console` (alerts merged by id, agents, offline devices,
streetlights, walk-home sessions), logs each change on the terminal and serves a live map on
localhost (:mod:`.web`, the page in ``static/``). The operator's buttons become acks and
monitoring requests (:mod:`.broker`).
"""
