"""The simulated street and city: a street provisioned on disk as ``ansim provision`` leaves it
(``street``); scenarios and load runs with a place of real coordinates, many devices speaking
the real protocol, real agents and brokers, a timeline of events and checked expectations
(``ansim sim run``, ``ansim sim load``; simulators/scenarios/README.md); and the fault run that
kills what a city's power cuts would (``faults``, ``ansim faults``)."""
