"""Helpers for tests and benchmarks: a free loopback port, a uvicorn server in a thread or a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_ready(base: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{base} not ready after {timeout}s")


class ThreadServer:
    """uvicorn serving `app` on a free loopback port in a daemon thread (context manager)."""

    def __init__(self, app: Any, port: int | None = None, **tls: Any) -> None:
        import uvicorn

        self.port = port or free_port()
        self.base = f"{'https' if tls else 'http'}://{LOOPBACK}:{self.port}"
        self.tls = tls
        service = getattr(getattr(app, "state", None), "service", None)
        if service is not None:  # the edgeae app: the same protocol limits as `edgeae serve`
            from edgeae.serve.app import uvicorn_config

            config = uvicorn_config(app, service.config, LOOPBACK, self.port, **tls)
        else:
            config = uvicorn.Config(app, host=LOOPBACK, port=self.port, log_level="warning", access_log=False,
                                    lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        if self.tls:
            deadline = time.monotonic() + 30
            while not self.server.started and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            wait_ready(self.base)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class ProcessServer:
    """`edgeae serve` in a subprocess on a fixed loopback port; `kill()` sends SIGKILL (fault tests)."""

    def __init__(self, bundle: str | os.PathLike[str], port: int, *args: str, log: Path | None = None) -> None:
        self.cmd = [sys.executable, "-c", "from edgeae.cli import main; main()", "serve", "--bundle", str(bundle), "--host", LOOPBACK,
                    "--port", str(port), *args]
        self.base = f"http://{LOOPBACK}:{port}"
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> ProcessServer:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT)
        wait_ready(self.base, timeout, self.proc)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
