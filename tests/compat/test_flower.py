"""fedvc strategies inside Flower: round by round, and in Flower's own simulation engine.

The first tests drive ``FedvcStrategy`` the way ``Strategy.start`` does (configure_train,
then aggregate_train on the replies) with real Flower messages, so every check runs in a
second without Flower's runtime. The last two run numpy softmax regression on
scikit-learn's digits against a ``ServerApp`` in ``flwr.simulation.run_simulation``, once
as a plain Flower ``ClientApp`` knowing nothing of fedvc and once as a fedvc ``Task``
behind ``task_client_app``; they need Flower's simulation extra
(``pip install "flwr[simulation]"``, which brings Ray) and are skipped without it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bitwise import assert_bit_equal

pytest.importorskip("flwr")

from flower_fakes import SERVER_KEY, Nodes
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedvc.compat.flower import FedvcStrategy, arrays_to_params, params_to_arrays
from fedvc.compat.flower_client import task_client_app
from fedvc.merge import Update, fedavg, fedavgm, fisher, median, regmean, trimmed_mean
from fedvc.merge.base import MergeError, MergeStrategy
from fedvc.objects import Commit, ObjectId
from fedvc.participant import TrainResult
from fedvc.replay import replay_history, snapshot_id
from fedvc.repo import Repository
from fedvc.round import ROUND_KEY, RoundError
from fedvc.tensors import ParamMap
from fedvc.trust import TrustStore
from fedvc.verify import verify

# -- driving a strategy by hand ---------------------------------------------------------


def model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": rng.normal(size=(8, 4)).astype(np.float32),
        "fc1.bias": np.zeros(8, np.float32),
        "fc2.weight": rng.normal(size=(3, 8)).astype(np.float32),
        "fc2.bias": np.zeros(3, np.float32),
    }


Content = Callable[[int, dict[str, np.ndarray]], RecordDict | Error]


def trained(node: int, params: dict[str, np.ndarray]) -> RecordDict:
    """What a well-behaved client sends: a moved model, its example count and loss."""
    rng = np.random.default_rng(node)
    moved = {
        k: (v + rng.normal(scale=0.1, size=v.shape)).astype(v.dtype) for k, v in params.items()
    }
    return RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in moved.items()}),
            "metrics": MetricRecord({"num-examples": 10 * node, "loss": 1.0 / node}),
        }
    )


def run_round(
    strategy: FedvcStrategy,
    arrays: ArrayRecord,
    server_round: int,
    nodes: list[int],
    content: Content = trained,
) -> tuple[ArrayRecord | None, MetricRecord | None, list[Message]]:
    """One training round as Strategy.start runs it, each node replying with ``content``."""
    messages = strategy.configure_train(server_round, arrays, ConfigRecord(), Nodes(nodes))
    replies = []
    for message in messages:
        params = arrays_to_params(message.content["arrays"])
        reply = content(message.metadata.dst_node_id, params)
        replies.append(Message(reply, reply_to=message))
    merged, metrics = strategy.aggregate_train(server_round, replies)
    return merged, metrics, replies


def strategy_for(
    repo: Repository, name: str | MergeStrategy = "fedavg", **kw: Any
) -> FedvcStrategy:
    return FedvcStrategy(name, repo, SERVER_KEY, min_train_nodes=1, min_available_nodes=1, **kw)


def merges(repo: Repository) -> list[tuple[ObjectId, Commit]]:
    """The round merges on main, oldest first."""
    history = repo.log("main", first_parent=True)
    return [(oid, c) for oid, c in reversed(history) if len(c.parents) > 1]


def recorded_updates(repo: Repository, merge: Commit) -> list[Update]:
    """The updates a merge commit names, as fedvc's strategies take them."""
    updates = []
    for parent in merge.parents[1:]:
        commit = repo.get_commit(parent)
        fisher_id, grams_id = commit.metadata.get("fisher"), commit.metadata.get("grams")
        updates.append(
            Update(
                repo.read_snapshot(commit.snapshot),
                weight=float(commit.metadata["examples"]),
                client=parent,
                fisher=repo.read_snapshot(ObjectId(fisher_id)) if fisher_id else None,
                grams=repo.read_snapshot(ObjectId(grams_id)) if grams_id else None,
            )
        )
    return updates


def assert_audited(repo: Repository, rev: str = "main") -> None:
    """`fedvc verify --trust server.pub --replay`: hashes, signatures, and every merge redone."""
    assert verify(repo, rev, TrustStore([SERVER_KEY.public_key])).ok
    replays = replay_history(repo, rev)
    assert replays and all(r.ok for r in replays), [r.detail for r in replays]


# -- conversions --------------------------------------------------------------------------


def test_conversions_keep_names_order_and_dtypes() -> None:
    arrays = [np.arange(i + 1, dtype=np.float32 if i % 2 else np.int64) for i in range(12)]
    params = arrays_to_params(ArrayRecord(arrays))
    assert list(params) == [str(i) for i in range(12)]  # "10" after "9", not after "1"
    back = params_to_arrays(params).to_numpy_ndarrays()
    for original, returned in zip(arrays, back, strict=True):
        assert returned.dtype == original.dtype and np.array_equal(returned, original)
    repo = Repository.memory()
    assert snapshot_id(params) == repo.write_snapshot(params)


# -- one round at a time ----------------------------------------------------------------


def test_each_round_is_a_signed_octopus_merge_that_matches_fedavg(
    tmp_path: Path, flower_task: None
) -> None:
    repo = Repository.init(tmp_path)
    strategy = strategy_for(repo)
    arrays = params_to_arrays(model())
    for server_round in (1, 2):
        merged, metrics, replies = run_round(strategy, arrays, server_round, [1, 2, 3])
        assert merged is not None and metrics is not None
        arrays = merged

        # Flower's own FedAvg on the very same replies agrees up to float rounding
        flower_arrays, flower_metrics = FedAvg().aggregate_train(server_round, replies)
        for name, value in arrays_to_params(flower_arrays).items():
            np.testing.assert_allclose(arrays_to_params(merged)[name], value, rtol=1e-6, atol=1e-7)
        assert dict(metrics) == pytest.approx(dict(flower_metrics))

    history = merges(repo)
    assert [c.metadata[ROUND_KEY] for _, c in history] == [1, 2]
    initial = repo.log("main", first_parent=True)[-1]
    assert initial[1].parents == () and history[0][1].parents[0] == initial[0]
    assert history[1][1].parents[0] == history[0][0]
    for oid, merge in history:
        base, *updates = merge.parents
        assert len(updates) == 3 and updates == sorted(updates)
        nodes = set()
        for update in updates:
            commit = repo.get_commit(update)
            assert commit.parents == (base,) and commit.author == SERVER_KEY.public_key.hex()
            assert commit.metadata[ROUND_KEY] == merge.metadata[ROUND_KEY]
            node = commit.metadata["flower"]["node_id"]
            assert commit.metadata["examples"] == 10 * node
            assert commit.metadata["metrics"] == {"loss": pytest.approx(1.0 / node)}
            nodes.add(node)
        assert nodes == {1, 2, 3}
        record = merge.metadata["round"]
        assert record["strategy"] == {"name": "fedavg", "params": {}}
        assert record["examples"] == 60 and record["rejected"] == []
        assert {p["flower"]["node_id"] for p in record["participants"]} == {1, 2, 3}
        assert record["interference"]["clients"] == 3 and "score" in record["interference"]
        assert record["flower"]["failures"] == 0
        # bitwise the fedvc FedAvg of what the commit records (what `verify --replay` redoes)
        expected, _ = fedavg().merge(repo.read_params(base), recorded_updates(repo, merge), {})
        assert_bit_equal(repo.read_params(oid), expected)

    # Flower gets back exactly the tip of main, in the order it sent the arrays
    tip = repo.read_params("main")
    returned = arrays_to_params(arrays)
    assert list(returned) == list(model())
    assert_bit_equal(returned, tip)
    assert strategy.merges == [oid for oid, _ in history]
    report = verify(repo, "main", TrustStore([SERVER_KEY.public_key]))
    assert report.ok and report.signed == report.commits == 1 + 2 * 4
    assert_audited(repo)


def test_a_registered_strategy_works_by_name_with_params(flower_task: None) -> None:
    repo = Repository.memory()
    strategy = strategy_for(repo, "trimmed_mean", params={"beta": 0.2})
    merged, _, _ = run_round(strategy, params_to_arrays(model()), 1, [1, 2, 3, 4, 5])
    assert merged is not None
    [(_, merge)] = merges(repo)
    assert merge.metadata["round"]["strategy"] == {"name": "trimmed_mean", "params": {"beta": 0.2}}
    expected, _ = trimmed_mean(beta=0.2).merge(
        repo.read_params(merge.parents[0]), recorded_updates(repo, merge), {}
    )
    assert_bit_equal(arrays_to_params(merged), expected)
    assert_audited(repo)


def faulty(node: int, params: dict[str, np.ndarray]) -> RecordDict | Error:
    """Nodes 1 and 2 behave; the others send what a door must keep out."""
    if node <= 2:
        return trained(node, params)
    good = trained(node, params)
    arrays = {k: v.numpy() for k, v in good["arrays"].items()}
    metrics = MetricRecord({"num-examples": 5, "loss": 0.5})
    if node == 3:
        arrays["fc1.weight"][0, 0] = np.nan
    elif node == 4:
        arrays["fc2.bias"] = np.zeros(4, np.float32)
    elif node == 5:
        del arrays["fc2.bias"]
    elif node == 6:
        metrics = MetricRecord({"loss": 0.5})
    elif node == 7:
        return Error(code=0, reason="the client crashed")
    elif node == 8:  # numbered "0", "1"... instead of the names it was sent
        return RecordDict({"arrays": ArrayRecord(list(arrays.values())), "metrics": metrics})
    return RecordDict(
        {"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}), "metrics": metrics}
    )


def test_bad_replies_are_rejected_listed_and_kept_out_of_the_store(flower_task: None) -> None:
    repo = Repository.memory()
    strategy = strategy_for(repo, "median")
    merged, _, replies = run_round(
        strategy, params_to_arrays(model()), 1, list(range(1, 9)), faulty
    )
    assert merged is not None
    [(_, merge)] = merges(repo)
    assert len(merge.parents) == 3  # the base and nodes 1 and 2
    record = merge.metadata["round"]
    rejected = {r["flower"]["node_id"]: r["reason"] for r in record["rejected"]}
    assert rejected == {
        3: "not_finite",
        4: "structure",
        5: "structure",
        6: "bad_metadata",
        8: "structure",
    }
    assert record["rejection_count"] == 5 and record["flower"]["failures"] == 1
    details = {r["flower"]["node_id"]: r["detail"] for r in record["rejected"]}
    assert all(detail.startswith(f"Flower node {node}:") for node, detail in details.items())
    assert "'fc1.weight' holds NaN" in details[3] and "list of arrays" in details[8]
    for reply in replies:  # nothing that failed the door was stored
        if reply.metadata.src_node_id in rejected:
            params = {k: v.numpy() for k, v in reply.content["arrays"].items()}
            assert not repo.objects.contains(snapshot_id(params))
    expected, _ = median().merge(
        repo.read_params(merge.parents[0]), recorded_updates(repo, merge), {}
    )
    assert_bit_equal(arrays_to_params(merged), expected)
    assert_audited(repo)


def test_a_round_without_an_admissible_update_changes_nothing(flower_task: None) -> None:
    repo = Repository.memory()
    strategy = strategy_for(repo)
    arrays = params_to_arrays(model())
    merged, metrics, _ = run_round(strategy, arrays, 1, [3, 4, 7], faulty)
    assert (merged, metrics) == (None, None)
    [(tip, initial)] = repo.log("main")
    assert initial.parents == () and merges(repo) == []
    # the next round reopens on the same base, as round 1 again
    merged, _, _ = run_round(strategy, arrays, 2, [1])
    assert merged is not None
    [(_, merge)] = merges(repo)
    assert merge.parents[0] == tip and merge.metadata[ROUND_KEY] == 1
    assert merge.metadata["round"]["flower"]["server_round"] == 2


def test_a_run_continues_from_main_with_its_strategy_state(flower_task: None) -> None:
    repo = Repository.memory()
    first = strategy_for(repo, fedavgm(momentum=0.5))
    arrays = params_to_arrays(model())
    for server_round in (1, 2):
        merged, _, _ = run_round(first, arrays, server_round, [1, 2])
        assert merged is not None
        arrays = merged
    saved = merges(repo)[-1][1].metadata["round"]["strategy_state"]

    # another model than main's tip would not branch from the history
    stranger = strategy_for(repo, fedavgm(momentum=0.5))
    with pytest.raises(RoundError, match="not the tip of branch 'main'"):
        run_round(stranger, params_to_arrays(model(seed=1)), 1, [1, 2])

    # a new ServerApp run that starts from main continues the numbering and the momentum
    second = strategy_for(repo, fedavgm(momentum=0.5))
    resumed = params_to_arrays(repo.read_params("main"))
    merged, _, _ = run_round(second, resumed, 1, [1, 2])
    assert merged is not None
    oid, merge = merges(repo)[-1]
    assert merge.metadata[ROUND_KEY] == 3
    velocity = repo.read_snapshot(ObjectId(saved))
    expected, _ = fedavgm(momentum=0.5).merge(
        repo.read_params(merge.parents[0]), recorded_updates(repo, merge), dict(velocity)
    )
    assert_bit_equal(repo.read_params(oid), expected)

    # a branch of its own records an unrelated run next to main
    other = strategy_for(repo, branch="flower-run")
    merged, _, _ = run_round(other, params_to_arrays(model(seed=1)), 1, [1])
    assert merged is not None and repo.branches()["main"] == oid
    assert_audited(repo, "main")  # the resumed momentum replays too
    assert_audited(repo, "flower-run")


def with_fisher(node: int, params: dict[str, np.ndarray]) -> RecordDict:
    reply = trained(node, params)
    if node != 3:
        diag = {k: np.full(v.shape, float(node), v.dtype) for k, v in params.items()}
        reply["fisher"] = ArrayRecord({k: Array(v) for k, v in diag.items()})
    return reply


def test_a_fisher_strategy_asks_for_and_records_each_clients_fisher(flower_task: None) -> None:
    repo = Repository.memory()
    strategy = strategy_for(repo, "fisher")
    messages = strategy.configure_train(1, params_to_arrays(model()), ConfigRecord(), Nodes([1]))
    assert all(m.content["config"]["fisher"] is True for m in messages)
    strategy = strategy_for(repo, "fisher")
    merged, _, _ = run_round(strategy, params_to_arrays(model()), 1, [1, 2, 3], with_fisher)
    assert merged is not None
    [(_, merge)] = merges(repo)
    assert [r["reason"] for r in merge.metadata["round"]["rejected"]] == ["bad_metadata"]
    updates = recorded_updates(repo, merge)
    assert all(u.fisher is not None for u in updates) and len(updates) == 2
    expected, _ = fisher().merge(repo.read_params(merge.parents[0]), updates, {})
    assert_bit_equal(arrays_to_params(merged), expected)
    assert_audited(repo)


def with_grams(node: int, params: dict[str, np.ndarray]) -> RecordDict:
    """Nodes 1 and 2 send the Grams of their layers' inputs; 3 sends none; 4 a wrong size."""
    reply = trained(node, params)
    rng = np.random.default_rng(100 + node)
    sides = {"fc1.weight": 5, "fc2.weight": 9 if node != 4 else 8}
    if node != 3:
        grams = {}
        for name, side in sides.items():
            inputs = rng.normal(size=(20, side))
            grams[name] = inputs.T @ inputs
        reply["grams"] = ArrayRecord({k: Array(v) for k, v in grams.items()})
    return reply


def test_regmean_asks_for_and_records_each_clients_grams(flower_task: None) -> None:
    repo = Repository.memory()
    strategy = strategy_for(repo, "regmean")
    messages = strategy.configure_train(1, params_to_arrays(model()), ConfigRecord(), Nodes([1]))
    assert all(m.content["config"]["grams"] is True for m in messages)
    strategy = strategy_for(repo, "regmean")
    merged, _, _ = run_round(strategy, params_to_arrays(model()), 1, [1, 2, 3, 4], with_grams)
    assert merged is not None
    [(_, merge)] = merges(repo)
    rejected = {r["reason"]: r["detail"] for r in merge.metadata["round"]["rejected"]}
    assert sorted(rejected) == ["bad_metadata", "structure"]  # nodes 3 and 4
    assert "layer input Grams" in rejected["bad_metadata"] and "9x9" in rejected["structure"]
    updates = recorded_updates(repo, merge)
    assert len(updates) == 2 and all(u.grams is not None for u in updates)
    expected, _ = regmean().merge(repo.read_params(merge.parents[0]), updates, {})
    fedavg_merge, _ = fedavg().merge(repo.read_params(merge.parents[0]), updates, {})
    assert_bit_equal(arrays_to_params(merged), expected)
    assert not np.allclose(expected["fc1.weight"], fedavg_merge["fc1.weight"])
    assert_audited(repo)


def test_strategy_arguments_are_checked() -> None:
    repo = Repository.memory()
    with pytest.raises(MergeError, match="update transform"):
        FedvcStrategy("clip_by_norm", repo, SERVER_KEY, params={"max_norm": 1.0})
    with pytest.raises(MergeError, match="already built"):
        FedvcStrategy(fedavg(), repo, SERVER_KEY, params={"beta": 0.1})
    with pytest.raises(RoundError, match="before configure_train"):
        strategy_for(repo).aggregate_train(1, [])


# -- Flower's simulation engine ---------------------------------------------------------

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason='Flower\'s simulation engine needs its extra: pip install "flwr[simulation]"',
)

DIGITS_CLASSES, DIGITS_FEATURES = 10, 64


def digits_share(partition: int, partitions: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    inputs, targets = load_digits(return_X_y=True)
    return (inputs / 16.0).astype(np.float32)[partition::partitions], targets[partition::partitions]


def softmax_loss(
    weight: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[float, np.ndarray]:
    logits = x @ weight.T + bias
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    loss = float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean())
    return loss, probs


def fit_softmax(
    weight: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Twenty full-batch gradient steps of softmax regression from ``(weight, bias)``."""
    weight, bias = weight.copy(), bias.copy()
    onehot = np.eye(DIGITS_CLASSES, dtype=np.float32)[y]
    for _ in range(20):
        _, probs = softmax_loss(weight, bias, x, y)
        grad = (probs - onehot) / len(y)
        weight -= 0.5 * (grad.T @ x)
        bias -= 0.5 * grad.sum(axis=0)
    loss, _ = softmax_loss(weight, bias, x, y)
    return weight, bias, loss


digits_client = ClientApp()


@digits_client.train()
def train_digits(msg: Message, context: Context) -> Message:
    """A plain Flower ClientApp: a few epochs of softmax regression on its share of digits."""
    partition = int(context.node_config["partition-id"])
    partitions = int(context.node_config["num-partitions"])
    x, y = digits_share(partition, partitions)
    arrays = msg.content["arrays"]
    weight, bias, loss = fit_softmax(arrays["fc.weight"].numpy(), arrays["fc.bias"].numpy(), x, y)
    reply = RecordDict(
        {
            "arrays": ArrayRecord({"fc.weight": Array(weight), "fc.bias": Array(bias)}),
            "metrics": MetricRecord({"num-examples": len(y), "train-loss": loss}),
        }
    )
    return Message(reply, reply_to=msg)


class DigitsTask:
    """The same training as a fedvc ``Task``, run on Flower through ``task_client_app``.

    With ``poison-last`` in the round's config the last of the 4 clients is broken and
    sends a NaN.
    """

    def __init__(self, partition: int) -> None:
        self.partition = partition

    def train(self, params: ParamMap, config: Mapping[str, Any]) -> TrainResult:
        x, y = digits_share(self.partition, 4)
        weight, bias, loss = fit_softmax(params["fc.weight"], params["fc.bias"], x, y)
        if config.get("poison-last", False) and self.partition == 3:
            weight[0, 0] = np.nan
        return TrainResult({"fc.weight": weight, "fc.bias": bias}, len(y), {"train-loss": loss})


def simulate(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    strategy: str,
    rounds: int,
    poison: bool,
    client_app: ClientApp = digits_client,
) -> tuple[Repository, dict[str, np.ndarray]]:
    """Run a digits ClientApp on 4 simulated SuperNodes against a fedvc ServerApp."""
    from flwr.simulation import run_simulation

    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    repo = Repository.init(tmp_path / "history")
    final: dict[str, np.ndarray] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        fedvc_strategy = FedvcStrategy(
            strategy,
            repo,
            SERVER_KEY,
            fraction_evaluate=0.0,
            min_train_nodes=4,
            min_available_nodes=4,
        )
        initial = {
            "fc.weight": np.zeros((DIGITS_CLASSES, DIGITS_FEATURES), np.float32),
            "fc.bias": np.zeros(DIGITS_CLASSES, np.float32),
        }
        result = fedvc_strategy.start(
            grid=grid,
            initial_arrays=params_to_arrays(initial),
            num_rounds=rounds,
            train_config=ConfigRecord({"poison-last": poison}),
        )
        final.update(arrays_to_params(result.arrays))

    run_simulation(
        server_app=server,
        client_app=client_app,
        num_supernodes=4,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2, "include_dashboard": False},
        },
    )
    return repo, final


@pytest.mark.slow
@needs_ray
def test_fedavg_in_flowers_simulation_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, final = simulate(tmp_path, monkeypatch, "fedavg", rounds=3, poison=False)
    history = merges(repo)
    assert [c.metadata[ROUND_KEY] for _, c in history] == [1, 2, 3]
    for oid, merge in history:
        base, *updates = merge.parents
        assert len(updates) == 4 and updates == sorted(updates)
        provenance = [repo.get_commit(u).metadata["flower"] for u in updates]
        assert len({p["node_id"] for p in provenance}) == 4
        assert all(p["message_id"] for p in provenance)  # ids the SuperLink gave the replies
        recorded = recorded_updates(repo, merge)
        expected, _ = fedavg().merge(repo.read_params(base), recorded, {})
        assert_bit_equal(repo.read_params(oid), expected)
        flower = aggregate_arrayrecords(
            [
                RecordDict(
                    {
                        "arrays": params_to_arrays(u.params),
                        "metrics": MetricRecord({"num-examples": int(u.weight)}),
                    }
                )
                for u in recorded
            ],
            "num-examples",
        )
        for name, value in arrays_to_params(flower).items():
            np.testing.assert_allclose(expected[name], value, rtol=1e-5, atol=1e-6)
        assert "train-loss" in merge.metadata["round"]["metrics"]
    assert_bit_equal(final, repo.read_params("main"))
    assert_audited(repo)

    x, y = digits_share(0, 1)
    _, probs = softmax_loss(final["fc.weight"], final["fc.bias"], x, y)
    assert (probs.argmax(axis=1) == y).mean() > 0.85  # the federation learned digits


@pytest.mark.slow
@needs_ray
def test_a_robust_strategy_rejects_a_broken_fedvc_task_in_the_simulation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clients here are fedvc Tasks, run unchanged as Flower ClientApps."""
    app = task_client_app(DigitsTask)
    repo, final = simulate(tmp_path, monkeypatch, "median", rounds=2, poison=True, client_app=app)
    history = merges(repo)
    assert len(history) == 2
    for oid, merge in history:
        assert len(merge.parents) == 1 + 3
        [rejection] = merge.metadata["round"]["rejected"]
        assert rejection["reason"] == "not_finite" and "fc.weight" in rejection["detail"]
        assert rejection["flower"]["message_id"]
        expected, _ = median().merge(
            repo.read_params(merge.parents[0]), recorded_updates(repo, merge), {}
        )
        assert_bit_equal(repo.read_params(oid), expected)
    assert np.isfinite(final["fc.weight"]).all()
    assert_audited(repo)
