"""ansim wire protocol v1: one implementation for MicroPython devices and the CPython agent.

Modules: ``errors`` (the one error type), ``crypto`` (HMAC-SHA256 and key derivation on
nothing but ``hashlib.sha256``), ``frames`` (the frame codec), ``ble`` (advertisement
wrapping), ``serial_link`` (COBS + CRC framing for UARTs), ``topics`` (the MQTT topic scheme).
The byte-level specification is SPEC.md beside this file.

This file stays empty of imports so that a device loads only the modules it uses.
"""
