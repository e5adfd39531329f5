"""Every kind of alert the core makes validates against the published JSON Schema."""

import json
import pathlib

import jsonschema
import pytest

from ansim_agent import alerts
from ansim_agent.intake import Reception
from ansim_protocol import frames
from ansim_protocol.crypto import DeviceKeys, epoch_of
from test_core import NOW, Clock, make_core
from ansim_simulators.world.street import Street

SCHEMA = json.loads((pathlib.Path(alerts.__file__).parent / "alert.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


@pytest.fixture
def bodies(tmp_path):
    street = Street(tmp_path / "street", center_port=1)
    clock = Clock()
    core, store = make_core(street, clock)
    wearable, bell, light = street.wearables[0], street.bells[0], street.lights[0]
    wk, bk, lk = (DeviceKeys(d.key) for d in (wearable, bell, light))
    epoch = epoch_of(NOW)
    fix = {"lat": 37.5664, "lon": 126.978, "accuracy_m": 7}
    received = [
        Reception(frames.build_sealed("sos", fix, wk, 1, epoch), "ble", "ble0", rssi=-71),
        Reception(frames.build_sealed("cancel", {"sos_counter": 1}, wk, 2, epoch), "ble", "ble0", rssi=-70),
        Reception(frames.build_sealed("test_sos", {"lat": None, "lon": None, "accuracy_m": 0}, wk, 3, epoch),
                  "serial", "uart0"),
        Reception(frames.build_sealed("low_battery", {"battery_pct": 8, "battery_mv": 3400}, wk, 4, epoch), "ble", "b"),
        Reception(frames.build_sealed("monitor", {"action": "start", "session": 0}, wk, 5, epoch), "ble", "b"),
        Reception(frames.build_plain("bell_press", {"button": 1}, bk, bell.device_id, 1), "mqtt", "local"),
        Reception(frames.build_plain("tamper", {"state": "opened"}, bk, bell.device_id, 2), "mqtt", "local"),
        Reception(frames.build_plain("light_state", {"commanded_pct": 60, "actual_pct": 0, "mode": "schedule",
                                                     "faults": 1, "last_command": 0}, lk, light.device_id, 1),
                  "mqtt", "local"),
    ]
    outcomes, _ = core.process_batch(received)
    made = [core.store.alert(o.alert_id)[2] for o in outcomes]
    registry_bell = core.registry.get(bell.device_id)
    made.append(alerts.availability(registry_bell, False, NOW - 200, NOW, core.config, "silent"))
    made.append(alerts.availability(registry_bell, True, NOW - 10, NOW, core.config, "heard"))
    store.close()
    return made


def test_every_alert_type_validates(bodies):
    assert {b["type"] for b in bodies} == set(SCHEMA["properties"]["type"]["enum"])
    for body in bodies:
        errors = sorted(VALIDATOR.iter_errors(body), key=str)
        assert not errors, "%s: %s" % (body["type"], errors[0])


def test_schema_rejects_an_alert_without_a_location_source(bodies):
    broken = json.loads(json.dumps(bodies[0]))
    del broken["location"]["source"]
    assert list(VALIDATOR.iter_errors(broken))
