"""The identity Flower's runtime would set before a ServerApp builds messages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def flower_task() -> Iterator[None]:
    """The run and node identity Flower's runtime sets before a ServerApp builds messages."""
    task_identity = pytest.importorskip("flwr.supercore.task_identity").TaskIdentity
    saved = task_identity._run_id, task_identity._node_id, task_identity._task_id
    task_identity.run_id, task_identity.node_id, task_identity.task_id = 1, 0, 1
    yield
    task_identity._run_id, task_identity._node_id, task_identity._task_id = saved
