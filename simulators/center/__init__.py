"""The control center's end of the agents' uplink, for tests, the demo and scenarios: it
subscribes, deduplicates and acknowledges as a center must (edge_agent/CENTER_API.md)."""
