"""Virtual hardware: a MicroPython board running the real firmware, and a BLE air with real
bumble controllers on it. Only what cannot exist on this machine (a radio, a GPIO pin, an
ESP32) is simulated, and then at its interface: MicroPython's own APIs on the board, HCI on the air."""
