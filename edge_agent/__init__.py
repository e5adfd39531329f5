"""The ansim edge agent (Raspberry Pi): from BLE, MQTT and serial intake to the control
center and the streetlights. Transport adapters wrap a core that knows nothing about them."""
