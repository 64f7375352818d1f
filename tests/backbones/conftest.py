"""Shared fixtures of the backbone tests."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection the code under test attempts, as ``(host, port)`` in order (the
    attempts still go ahead): "fails fast, never retries, no network" as a count, not a clock."""
    seen: list[tuple[str, int]] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def record(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host, port = address[:2]  # type: ignore[index]
            seen.append((host, port))

    def connect(self: socket.socket, address: object) -> None:
        record(self, address)
        return real_connect(self, address)  # type: ignore[arg-type]

    def connect_ex(self: socket.socket, address: object) -> int:
        record(self, address)
        return real_connect_ex(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return seen
