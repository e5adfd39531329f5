# Runs on the MicroPython VM: one "power-on" of a device that sends frames and loses power at
# an arbitrary moment. Reads run.json: how many frames to send this time; appends every counter
# it used to used.log before "losing power" (exiting without any cleanup).
import json
import sys

from ansim_device.counter import PersistentCounter, ReplayGuard

with open("run.json") as f:
    run = json.load(f)
counter = PersistentCounter("state/counter", block=run["block"])
guard = ReplayGuard("state/commands")
with open("used.log", "a") as log:
    for _ in range(run["frames"]):
        log.write("%d\n" % counter.next())
    for command in run["commands"]:
        log.write("cmd %d %d\n" % (command, 1 if guard.accept(command) else 0))
sys.exit(0)
