"""Shared by the real-model tests: bundled tasks, skipped with the install command when absent."""

import pytest


@pytest.fixture(scope="session")
def load_task():
    """``load_task(name, **kw)``: lowbit.zoo.load_task, or a skip naming what to install."""
    zoo = pytest.importorskip("lowbit.zoo", reason="the bundled-model zoo is not built yet")
    from lowbit.data import AssetMissing

    def load(name: str, **kw):
        try:
            return zoo.load_task(name, **kw)
        except AssetMissing as e:
            pytest.skip(str(e))

    return load
