"""A fedvc ``Task`` as a Flower ``ClientApp``, called the way Flower's runtime calls it.

The messages come from the strategies themselves (Flower's ``FedAvg`` and
``FedvcStrategy``'s ``configure_train``), the replies go back into their
``aggregate_train``, so the round trip is Flower's own, without its runtime. The run in
Flower's simulation engine is in ``test_flower.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import pytest

pytest.importorskip("flwr")

from flower_fakes import SERVER_KEY, Nodes
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from fedvc.compat.flower import FedvcStrategy, arrays_to_params, params_to_arrays
from fedvc.compat.flower_client import task_client_app
from fedvc.merge import Update, fedavg
from fedvc.participant import TaskError, TrainResult
from fedvc.repo import Repository
from fedvc.tensors import ParamMap

pytestmark = pytest.mark.usefixtures("flower_task")


def model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "layer.weight": rng.normal(size=(3, 4)).astype(np.float32),
        "layer.bias": np.zeros(3, np.float32),
        "out.weight": rng.normal(size=(2, 3)).astype(np.float32),
    }


class ShiftTask:
    """A numpy task: client ``k`` adds ``lr * (k + 1)`` to every weight, from 10(k+1) examples."""

    seen: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, client: int) -> None:
        self.client = client

    def train(self, params: ParamMap, config: Mapping[str, Any]) -> TrainResult:
        ShiftTask.seen.append({"client": self.client, **config})
        step = float(config.get("lr", 0.0)) * (self.client + 1)
        # reversed: the adapter must send the tensors back in the order they came
        moved = {k: (params[k] + step).astype(params[k].dtype) for k in reversed(list(params))}
        fisher = None
        if config.get("fisher"):
            fisher = {k: np.full_like(v, self.client + 1.0) for k, v in params.items()}
        grams = None
        if config.get("grams"):  # inputs of "layer" (4 and a bias), then of "out" (3, no bias)
            inputs = np.random.default_rng(self.client).normal(size=(10, 5))
            grams = {"layer.weight": inputs.T @ inputs, "out.weight": np.eye(3)}
        metrics = {"loss": 1.0 / (self.client + 1)}
        return TrainResult(moved, 10 * (self.client + 1), metrics, fisher, grams)


def context(partition: int | None, node: int) -> Context:
    config: dict[str, bool | float | int | str] = {"num-partitions": 3}
    if partition is not None:
        config["partition-id"] = partition
    return Context(run_id=1, node_id=node, node_config=config, state=RecordDict(), run_config={})


def answer(app: ClientApp, messages: Iterator[Message] | list[Message]) -> list[Message]:
    """Each node (ids 1, 2, 3 are partitions 0, 1, 2) runs the app on its message."""
    return [
        app(message, context(message.metadata.dst_node_id - 1, message.metadata.dst_node_id))
        for message in messages
    ]


def test_a_task_answers_flower_fedavg_as_a_flower_client_would() -> None:
    ShiftTask.seen.clear()
    app = task_client_app(ShiftTask, timing_key="train-seconds")
    strategy = FedAvg(min_train_nodes=3, min_available_nodes=3)
    sent = model()
    messages = strategy.configure_train(
        4, params_to_arrays(sent), ConfigRecord({"lr": 0.5}), Nodes([1, 2, 3])
    )
    replies = answer(app, list(messages))

    assert sorted(s["client"] for s in ShiftTask.seen) == [0, 1, 2]
    for seen in ShiftTask.seen:  # Flower's config, with the round as fedvc tasks read it
        assert seen["lr"] == 0.5 and seen["round"] == seen["server-round"] == 4
    for reply in replies:
        node = reply.metadata.src_node_id
        params = arrays_to_params(reply.content["arrays"])
        assert list(params) == list(sent)  # the order the server sent
        np.testing.assert_array_equal(params["layer.bias"], sent["layer.bias"] + 0.5 * node)
        metrics = reply.content["metrics"]
        assert metrics["num-examples"] == 10 * node and metrics["loss"] == pytest.approx(1 / node)
        assert metrics["train-seconds"] >= 0
        assert list(reply.content.array_records) == ["arrays"]  # no Fisher unless asked

    merged, metrics = strategy.aggregate_train(4, replies)
    assert merged is not None and metrics is not None
    expected = (10 * 0.5 + 20 * 1.0 + 30 * 1.5) / 60  # the example-weighted mean step
    np.testing.assert_allclose(
        arrays_to_params(merged)["layer.bias"], sent["layer.bias"] + expected, rtol=1e-6
    )


@pytest.mark.parametrize("strategy", ["fedavg", "fisher", "regmean"])
def test_a_task_takes_part_in_a_fedvc_round_on_flower(strategy: str) -> None:
    repo = Repository.memory()
    server = FedvcStrategy(strategy, repo, SERVER_KEY, min_train_nodes=3, min_available_nodes=3)
    app = task_client_app(ShiftTask)
    config = ConfigRecord({"lr": 0.1})
    messages = server.configure_train(1, params_to_arrays(model()), config, Nodes([1, 2, 3]))
    replies = answer(app, list(messages))
    merged, _ = server.aggregate_train(1, replies)
    assert merged is not None
    merge = repo.get_commit(repo.branches()["main"])
    record = merge.metadata["round"]
    assert len(merge.parents) == 4 and record["rejected"] == []
    assert sorted(p["examples"] for p in record["participants"]) == [10, 20, 30]
    updates = {parent: repo.get_commit(parent) for parent in merge.parents[1:]}
    assert all(("fisher" in u.metadata) == (strategy == "fisher") for u in updates.values())
    assert all(("grams" in u.metadata) == (strategy == "regmean") for u in updates.values())
    if strategy == "fedavg":
        recorded = [
            Update(repo.read_snapshot(u.snapshot), float(u.metadata["examples"]), client=oid)
            for oid, u in updates.items()
        ]
        expected, _ = fedavg().merge(model(), recorded, {})
        for name, value in arrays_to_params(merged).items():
            np.testing.assert_array_equal(value, expected[name])


class NoExamples(ShiftTask):
    def train(self, params: ParamMap, config: Mapping[str, Any]) -> TrainResult:
        return TrainResult(dict(params), 0)


class NoFisher(ShiftTask):
    def train(self, params: ParamMap, config: Mapping[str, Any]) -> TrainResult:
        return TrainResult(dict(params), 5)


def train_message(**config: bool) -> Message:
    content = RecordDict({"arrays": params_to_arrays(model()), "config": ConfigRecord(config)})
    return Message(content, dst_node_id=1, message_type="train")


def test_mistakes_are_named() -> None:
    with pytest.raises(TaskError, match="partition-id"):
        task_client_app(ShiftTask)(train_message(), context(None, 1))
    with pytest.raises(TaskError, match="positive int"):
        task_client_app(NoExamples)(train_message(), context(0, 1))
    with pytest.raises(TaskError, match=r"no TrainResult\.fisher"):
        task_client_app(NoFisher)(train_message(fisher=True), context(0, 1))
    with pytest.raises(TaskError, match=r"no TrainResult\.grams"):
        task_client_app(NoFisher)(train_message(grams=True), context(0, 1))
    two = RecordDict({"a": ArrayRecord(), "b": ArrayRecord(), "config": ConfigRecord()})
    with pytest.raises(TaskError, match="expected the model under 'arrays'"):
        task_client_app(ShiftTask)(Message(two, dst_node_id=1, message_type="train"), context(0, 1))
