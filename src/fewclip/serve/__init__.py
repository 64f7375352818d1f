"""``fewclip serve``: a fitted adapter behind an HTTP API (FastAPI + uvicorn, the ``serve``
extra). See :mod:`fewclip.serve.app` for the routes and their contract.

>>> from fewclip.serve import ServeConfig, run
>>> run(ServeConfig("my-adapter"), host="127.0.0.1", port=8000)   # doctest: +SKIP
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

from fewclip.errors import MissingExtraError

__all__ = [
    "SERVE_EXTRA_HINT",
    "ServeConfig",
    "check_installed",
    "create_app",
    "free_port",
    "is_loopback",
    "run",
]

SERVE_EXTRA_HINT = (
    "fewclip serve needs FastAPI, uvicorn, python-multipart and prometheus-client: "
    "pip install 'fewclip[serve]'"
)


def check_installed() -> None:
    """Raise :class:`~fewclip.errors.MissingExtraError` unless the ``serve`` extra is
    installed."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MissingExtraError(SERVE_EXTRA_HINT) from e


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(host: str) -> int:
    """A TCP port that is free on ``host`` now (for ``--port 0``; the server binds it a moment
    later, so another program could take it in between, as with any port given by number)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError:
            return 0  # an address that is not this machine's: let the server report the error
        return int(s.getsockname()[1])


def __getattr__(name: str) -> Any:
    if name in ("ServeConfig", "create_app"):
        check_installed()
        from fewclip.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'fewclip.serve' has no attribute {name!r}")


def _log_config() -> dict[str, Any]:
    """Plain lines on stderr: uvicorn's own messages, and fewclip's JSON access log."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(message)s"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "fewclip.serve": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }


def run(
    config: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    api_key: str | None = None,
    app: Any = None,
) -> None:
    """Serve until interrupted. One worker serves ``app`` (or one built from ``config``);
    several are separate processes, each loading the model (uvicorn's ``--workers``)."""
    check_installed()
    import uvicorn

    from fewclip.serve.app import CONFIG_ENV, create_app

    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "access_log": False,  # fewclip logs each request as one JSON line instead
        "log_config": _log_config(),
        "timeout_graceful_shutdown": 10,
    }
    if workers > 1:
        os.environ[CONFIG_ENV] = config.to_json()
        if api_key:
            os.environ["FEWCLIP_API_KEY"] = api_key
        uvicorn.run(
            "fewclip.serve.app:create_app_from_env", factory=True, workers=workers, **common
        )
        return
    if app is None:
        app = create_app(config, api_key=api_key)
    uvicorn.run(app, **common)
