# `make test` and `make demo` set up everything on a fresh Debian / Raspberry Pi OS machine:
# system packages through apt (sudo when not root), then .venv with the pinned dependencies.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test test-slow demo bench-firmware system-packages venv clean

test: venv
	$(BIN)/pytest -v

# The Hypothesis properties at 100,000 examples each (about 15 minutes on 2 cores).
test-slow: venv
	HYPOTHESIS_PROFILE=slow $(BIN)/pytest tests/test_properties.py

demo: venv
	$(BIN)/ansim demo

# Each role's firmware on the virtual board: latency and heap beside baselines (tools/bench_firmware.py).
bench-firmware: venv
	$(BIN)/ansim bench firmware

venv: $(STAMP)

system-packages:
	@sh tools/system-packages.sh

$(STAMP): pyproject.toml constraints.txt | system-packages
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
