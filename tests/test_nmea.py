"""The wearable's NMEA reader, golden and negative sentences, on CPython and on the MicroPython
VM (the same file the wearable runs): a fix gives (lat, lon, accuracy_m); anything malformed,
without a fix or with a bad checksum gives nothing."""

import importlib.util
import json
from functools import reduce

import pytest

from ansim_simulators.hardware import micropython_vm


def sentence(body):
    return "$%s*%02X" % (body, reduce(lambda a, c: a ^ ord(c), body, 0))


GOLDEN = [
    (sentence("GPGGA,123519,3733.9600,N,12658.8600,E,1,08,0.9,545.4,M,46.9,M,,"), (37.566, 126.981, 5)),
    (sentence("GNGGA,001043.00,3344.9000,S,15112.6000,W,2,12,2.4,10.0,M,0.0,M,,"), (-33.748333, -151.21, 12)),
    (sentence("GPRMC,123519,A,3733.9600,N,12658.8600,E,022.4,084.4,230394,003.1,W"), (37.566, 126.981, 25)),
    (sentence("GPGGA,123519,3733.9600,N,12658.8600,E,1,03,99.9,545.4,M,46.9,M,,"), (37.566, 126.981, 255)),
    (sentence("GPGGA,123519,3733.9600,N,12658.8600,E,1,08,,545.4,M,46.9,M,,"), (37.566, 126.981, 25)),
]
NEGATIVE = [
    sentence("GPGGA,123519,,,,,0,00,,,M,,M,,"),  # fix quality 0
    sentence("GPRMC,123519,V,3733.9600,N,12658.8600,E,0,0,230394,,"),  # V: no valid fix
    "$GPGGA,123519,3733.9600,N,12658.8600,E,1,08,0.9,545.4,M,46.9,M,,*00",  # wrong checksum
    "$GPGGA,123519,3733.9600,N,12658.8600,E,1,08,0.9,545.4,M,46.9,M,,",  # no checksum
    sentence("GPGGA,123519,3733.9600,X,12658.8600,E,1,08,0.9,545.4,M,46.9,M,,"),  # bad hemisphere
    sentence("GPGGA,123519,37,N,12658.8600,E,1,08,0.9,545.4,M,46.9,M,,"),  # truncated latitude
    sentence("GPGGA,123519,9933.9600,N,12658.8600,E,1,08,0.9,545.4,M,46.9,M,,"),  # 99 degrees
    sentence("GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00"),  # not a fix sentence
    sentence("GPGGA,1"),  # too few fields
    "garbage",
    "",
]


def _firmware_nmea():
    spec = importlib.util.spec_from_file_location("nmea", micropython_vm.FIRMWARE_DIR / "ansim_device" / "nmea.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(results):
    for (line, expected), got in zip(GOLDEN, results[:len(GOLDEN)], strict=True):
        assert got is not None, line
        assert got[0] == pytest.approx(expected[0], abs=1e-6) and got[1] == pytest.approx(expected[1], abs=1e-6), line
        assert got[2] == expected[2], line
    assert results[len(GOLDEN):] == [None] * len(NEGATIVE)


def test_nmea_on_cpython():
    nmea = _firmware_nmea()
    check([nmea.parse(line) for line, _ in GOLDEN] + [nmea.parse(line) for line in NEGATIVE])


def test_nmea_on_the_micropython_vm(tmp_path):
    (tmp_path / "nmea_in.json").write_text(json.dumps([line for line, _ in GOLDEN] + NEGATIVE))
    result = micropython_vm.run(micropython_vm.REPO / "tests" / "micropython" / "nmea_run.py", tmp_path,
                                extra_path=[micropython_vm.FIRMWARE_DIR])
    assert result.returncode == 0, result.stderr
    check(json.loads((tmp_path / "nmea_out.json").read_text()))
