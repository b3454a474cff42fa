"""fedvc_client.load_task: --task names a Task or a function that builds one from --task-arg."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from fedvc_client.run import load_task

from fedvc.participant import TrainResult
from fedvc.user_code import UserCodeError


class Scaled:
    def __init__(self, factor: float = 1.0) -> None:
        self.factor = factor

    def train(self, params: Mapping[str, Any], config: Mapping[str, Any]) -> TrainResult:
        return TrainResult(dict(params), examples=1)


def make(factor: float = 1.0) -> Scaled:
    return Scaled(factor)


READY = Scaled(3.0)
NOT_A_TASK = 42


def test_a_factory_is_called_with_the_task_arguments() -> None:
    task = load_task(f"{__name__}:make", {"factor": 2.5})
    assert isinstance(task, Scaled) and task.factor == 2.5
    assert load_task(f"{__name__}:READY") is READY
    built = load_task(f"{__name__}:Scaled", {"factor": 4.0})  # a Task class is a factory
    assert isinstance(built, Scaled) and built.factor == 4.0


@pytest.mark.parametrize(
    "spec, args, words",
    [
        ("READY", {"factor": 2}, "takes no --task-arg"),
        ("make", {"speed": 2}, "unexpected keyword argument 'speed'"),
        ("NOT_A_TASK", None, "has no train(params, config) method"),
    ],
)
def test_mistakes_are_named(spec: str, args: dict[str, Any] | None, words: str) -> None:
    with pytest.raises(UserCodeError) as caught:
        load_task(f"{__name__}:{spec}", args)
    assert words in str(caught.value)


def test_the_cache_is_a_store_or_a_new_directory_never_a_full_one(tmp_path: Path) -> None:
    from fedvc_client.run import open_cache

    from fedvc.repo import RepositoryNotFoundError

    first = open_cache(tmp_path / "cache")
    first.close()
    open_cache(tmp_path / "cache").close()  # reopened, not refused
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(RepositoryNotFoundError, match="not empty"):
        open_cache(tmp_path / "home")
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["notes.txt"]
