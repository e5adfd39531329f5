"""The device core shared by the wearable, the bell and the streetlight firmware (MicroPython).

Modules import lazily: a board loads only what its role uses."""
