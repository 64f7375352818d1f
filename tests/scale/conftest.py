"""A local Ray (two CPUs) for the scale-out tests, started once per pytest worker that runs
one of them and shut down at the end of the session."""

from __future__ import annotations

import pytest
from tests._extras import require_extra


@pytest.fixture(scope="session")
def ray_local():
    ray = require_extra("ray", "ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    if started:
        ray.shutdown()
