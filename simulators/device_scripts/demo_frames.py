# Runs on the MicroPython VM: the device side of `ansim demo` until the firmware (issue 4)
# exists. Reads demo_devices.json from the working directory, builds a wearable's sealed SOS
# (and its BLE advertisement) and a bell's plain press frame with the device copy of
# ansim_protocol, and prints them as one JSON object.
import binascii
import json
import sys

from ansim_protocol import ble, frames
from ansim_protocol.crypto import DeviceKeys, epoch_of


def unhex(text):
    return binascii.unhexlify(text)


def tohex(data):
    return binascii.hexlify(data).decode()


with open("demo_devices.json") as f:
    cfg = json.load(f)
wearable = DeviceKeys(unhex(cfg["wearable_key"]))
bell = DeviceKeys(unhex(cfg["bell_key"]))
sos = frames.build_sealed("sos", cfg["fix"], wearable, cfg["wearable_counter"], epoch_of(cfg["unix_time"]))
press = frames.build_plain("bell_press", {"button": 1}, bell, cfg["bell_id"], cfg["bell_counter"])
print(json.dumps({"sos": tohex(sos), "sos_adv": tohex(ble.advertisement(sos)), "bell_press": tohex(press),
                  "implementation": sys.implementation.name}))
