"""Start the installed ``fewclip serve`` in a subprocess on a free port, as a user would."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx

from fewclip.testing.cli import fewclip_exe

_LISTENING = re.compile(r"Uvicorn running on (http://\S+)")


class Server:
    """``fewclip serve ARGS --port 0``; :attr:`url` once it listens, :attr:`lines` its stderr."""

    def __init__(
        self, *args: str | os.PathLike[str], store: Path, env: dict[str, str] | None = None
    ):
        full_env = {**os.environ, "FEWCLIP_STORE": str(store), "HF_HUB_OFFLINE": "1"}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [fewclip_exe(), "serve", *map(str, args), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=full_env,
        )
        self.lines: list[str] = []
        self._url: str | None = None
        self._listening = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            m = _LISTENING.search(line)
            if m:
                self._url = m.group(1)
                self._listening.set()
        self._listening.set()  # the process ended

    def wait_listening(self, timeout: float = 120) -> str:
        """The base URL once the server listens; fails with its output if it never does."""
        if not self._listening.wait(timeout) or self._url is None:
            self.stop()
            raise AssertionError("fewclip serve did not start:\n" + "\n".join(self.lines[-30:]))
        return self._url

    def wait_ready(self, client: httpx.Client, timeout: float = 240) -> None:
        """Poll ``/ready`` until it answers 200 (with ``--workers N`` the port refuses
        connections until a worker process has loaded the model)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if client.get("/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("the server never became ready:\n" + "\n".join(self.lines[-30:]))

    @property
    def url(self) -> str:
        assert self._url is not None
        return self._url

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
