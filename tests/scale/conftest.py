"""A local Ray (two CPUs) shared by the scale-out tests of one pytest worker; the tests run in
one xdist group, so the suite starts it once."""

from __future__ import annotations

import pytest
from tests._extras import require_extra


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/scale/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.xdist_group("ray"))


@pytest.fixture(scope="session")
def ray_local():
    ray = require_extra("ray", "ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    if started:
        ray.shutdown()
