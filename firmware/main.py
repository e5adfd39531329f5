"""Boot entry of every ansim fixed device: load /config.json, run the module of its role."""

import gc
import sys

from ansim_device import config as config_module

ROLES = {"wearable": "wearable", "streetlight": "streetlight", "bell": "bell"}  # role -> firmware module


def main():
    try:
        config = config_module.load()
    except config_module.ConfigError as err:
        config_module.print_error(err)
        return
    role = config["role"]
    if role not in ROLES:
        print("ansim: role %r has no firmware in this build (known: %s); idle" % (role, ", ".join(ROLES)))
        return
    gc.collect()
    print("ansim: %s %s starting (heap alloc %d before the role's modules)"
          % (role, config["device_id"], gc.mem_alloc()))
    module = __import__(ROLES[role])
    try:
        module.main(config)
    except KeyboardInterrupt:
        print("ansim: stopped")
        raise
    except Exception as err:  # noqa: B902 (the REPL stays reachable; a watchdog would reset)
        sys.print_exception(err)


main()
