from __future__ import annotations

import pytest

from nokvpy.storage import Env


@pytest.fixture
def env(tmp_path):
    e = Env.open(tmp_path / "db", map_size=1 << 20)
    try:
        yield e
    finally:
        e.close()
