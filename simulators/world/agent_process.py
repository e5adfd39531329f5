"""The real agent as a child process, ``python -m ansim_tools.cli agent --config FILE``, as
systemd runs it: a kill -9 then strikes the agent alone, and a run starts it again as
``Restart=always`` would. It gets SIGTERM when the thread that started it ends
(``PR_SET_PDEATHSIG``), so it never outlives a run.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

from ansim_simulators.fixtures.broker import die_with_parent


class AgentProcess:
    """The agent as a child process, as systemd runs it; it dies with the harness."""

    def __init__(self, config_path, log_path):
        self.config_path, self.log_path = config_path, log_path
        self.proc = None
        self.starts = 0
        self.unexpected_exits = []  # (time, exit code): the agent ended without being killed

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "ansim_tools.cli", "agent", "--config",
                                          str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(os.getpid()))
        self.starts += 1

    def kill9(self):
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def check(self, now):
        """Start it again if it ended by itself (systemd's Restart=always); note the exit."""
        if self.proc is not None and self.proc.poll() is not None:
            self.unexpected_exits.append((now, self.proc.returncode))
            self.start()

    def stop(self):
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_tail(self, lines=15):
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
