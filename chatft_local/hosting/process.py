"""`chatft host` as a child process (`python -m chatft_local host ...`), for tests and scripts that need to kill
and restart the host."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Mapping, Sequence

from .keys import function_key

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
READY_LINE = re.compile(r"^chatft host ready: (http://127\.0\.0\.1:\d+)")


class HostProcess:
    """Runs the host in a child process; `start()` returns once it printed its ready line."""

    def __init__(self, app_module: str = "function_app", *, state_dir: str | os.PathLike, port: int = 0,
                 env: Mapping[str, str] | None = None, args: Sequence[str] = (), cwd: str | os.PathLike = PROJECT_ROOT):
        self.app_module = app_module
        self.state_dir = Path(state_dir)
        self._port = port
        self._env = {**os.environ, **(env or {})}
        self._args = list(args)
        self._cwd = cwd
        self._process: subprocess.Popen | None = None
        self._ready = threading.Event()
        self.output: collections.deque[str] = collections.deque(maxlen=500)  # the host's log, newest last
        self.base_url: str | None = None

    @property
    def function_key(self) -> str:
        return function_key(self.state_dir)

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def start(self, timeout: float = 120.0) -> "HostProcess":
        command = [sys.executable, "-m", "chatft_local", "host", "--app", self.app_module, "--port", str(self._port),
                   "--state-dir", str(self.state_dir), *self._args]
        self._process = subprocess.Popen(command, cwd=self._cwd, env=self._env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or self.base_url is None:
            self.kill()
            raise RuntimeError("the host process did not become ready:\n" + "\n".join(self.output))
        return self

    def _read(self) -> None:
        # Keep draining the pipe for the whole life of the process, or the host would block writing its log.
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            line = line.rstrip("\n")
            self.output.append(line)
            found = READY_LINE.match(line)
            if found and not self._ready.is_set():
                self.base_url = found.group(1)
                self._ready.set()
        self._ready.set()  # exited: start() stops waiting

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (a graceful stop, as Ctrl-C) and wait; returns the exit status."""
        if self._process is None:
            return 0
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self._process.returncode

    def kill(self) -> None:
        """SIGKILL: the host dies mid-work, as a crash."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(30)

    def __enter__(self) -> "HostProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
