"""A simulated world for scenarios and load runs: a place with real coordinates, many devices
speaking the real protocol, real agents and brokers, a timeline of events and checked
expectations (``ansim sim run``, ``ansim sim load``; simulators/scenarios/README.md)."""
