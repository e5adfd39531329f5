# Runs on the MicroPython VM: parses every sentence of nmea_in.json with the firmware's NMEA
# reader and writes the results to nmea_out.json (argv is too short for the data).
import json

from ansim_device import nmea

with open("nmea_in.json") as f:
    sentences = json.load(f)
with open("nmea_out.json", "w") as f:
    json.dump([nmea.parse(s) for s in sentences], f)
