"""Everything ansim needs to run a street without a street (package ``ansim_simulators``).

- ``hardware/``: what cannot exist on this machine, as close to the wire as possible: the
  virtual MicroPython board that runs the real firmware and that mpremote flashes
  (``virtual_board``, with the VM side in ``board/``), the MicroPython VM runner, the virtual
  BLE air (``ble_radio``, bumble) and a board's radio on it (``board_radio``).
- ``world/``: the street and the city: a provisioned street on disk (``street``), scenario
  files run against real agents and brokers (``ansim sim run``), load runs (``ansim sim
  load``), the fault run (``ansim faults``).
- ``center/``: the control center's side of the uplink (``control_center``).
- ``fixtures/``: what tests, benchmarks and the demo stand on: real mosquitto brokers on free
  ports (``broker``), a test PKI (``pki``), waits with deadlines (``waits``), a small
  filesystem to fill up (``smallfs``).
- ``scenarios/``: the scenario files, each also a test; their format is in its README.
"""
