"""fedvc strategies inside Flower: every Flower round a signed branch-and-merge in a repository.

A fleet that already runs on Flower keeps its ``ClientApp``s, its SuperLink and its
simulations; only the ``ServerApp``'s strategy changes. ``FedvcStrategy`` is Flower's
``FedAvg`` for everything Flower does well (sampling nodes, building and sending the train
and evaluate messages, aggregating evaluation metrics) and fedvc for what happens to the
models: each round opens on the base commit (the tip of ``main``, which is exactly the
model Flower sends), records every reply as an update commit branched from it, checks it
at the door, merges the admitted updates with any registered fedvc strategy and writes the
signed octopus merge commit (interference report included) that the gRPC coordinator
writes. The model handed back to Flower is the merged snapshot itself, so the next round's
base is again the tip of ``main``.

Written for Flower's Message API (``flwr.serverapp.strategy``: a ``ServerApp`` whose
``@app.main()`` calls ``strategy.start(grid=..., initial_arrays=..., num_rounds=...)``),
which is what a Flower 1.41 user writes; the older ``Parameters``/``FitRes`` strategies
(``flwr.server.strategy``) are not bridged.

The client side, any fedvc ``Task`` as a Flower ``ClientApp``, is
``fedvc.compat.flower_client.task_client_app``. These two modules are the only ones that
import ``flwr`` (see DESIGN.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedvc.admission import check_grams, check_structure, check_values, params_layout
from fedvc.coordinator import completed_rounds
from fedvc.merge.base import MergeError, MergeStrategy, State, uses_fisher, uses_grams
from fedvc.merge.registry import make
from fedvc.objects import ObjectId, short_id
from fedvc.replay import snapshot_id
from fedvc.repo import Repository, branch_ref
from fedvc.round import (
    ROUND_KEY,
    Admitted,
    Rejected,
    RoundConfig,
    RoundError,
    RoundState,
    UpdateRejected,
    merge_round,
    open_round,
    reject,
)
from fedvc.round_store import admitted_update, record_merge, starting_state
from fedvc.signing import SigningKey
from fedvc.tensors import ParamMap, TensorError, as_param_map


def arrays_to_params(record: ArrayRecord) -> dict[str, np.ndarray]:
    """A Flower ``ArrayRecord`` as a fedvc parameter map, in the record's key order.

    The record's keys become tensor names (a state_dict's names, or ``"0"``, ``"1"``...
    for a record built from a list of arrays). Flower serializes arrays with
    ``np.save(allow_pickle=False)`` and reads them back the same way, so nothing here
    unpickles; names and dtypes are checked as for any model entering fedvc.
    """
    return as_param_map({name: array.numpy() for name, array in record.items()})


def params_to_arrays(params: ParamMap) -> ArrayRecord:
    """A fedvc parameter map as a Flower ``ArrayRecord``, keeping the mapping's order.

    Order matters to Flower clients that read ``record.to_numpy_ndarrays()`` as a list.
    """
    return ArrayRecord(
        {name: Array.from_numpy_ndarray(np.asarray(array)) for name, array in params.items()}
    )


@dataclass(frozen=True)
class _Reply:
    """One training reply that passed the checks at the door, about to be recorded."""

    params: dict[str, np.ndarray]
    examples: int
    metrics: dict[str, float]
    fisher: dict[str, np.ndarray] | None
    grams: dict[str, np.ndarray] | None
    provenance: dict[str, Any]


@dataclass(frozen=True)
class _OpenRound:
    """The fedvc round a Flower training round runs, from configure_train to aggregate."""

    server_round: int
    state: RoundState
    base: dict[str, np.ndarray]  # the arrays Flower sent (the base), in its order


class FedvcStrategy(FedAvg):
    """A Flower strategy that merges with a fedvc strategy and records every round.

    ``strategy`` is a ``MergeStrategy`` or a registered name (``"fedavg"``, ``"median"``,
    ``"trimmed_mean"``, a plug-in...) built with ``params``. ``repo`` receives the history
    on ``branch``; ``signer`` signs every commit. Every other keyword goes to Flower's
    ``FedAvg``: sampling (``fraction_train``, ``min_train_nodes``, ``min_available_nodes``,
    ``fraction_evaluate``...), record keys (``weighted_by_key``: the example count,
    ``arrayrecord_key``...) and metric aggregation (``train_metrics_aggr_fn``...).

    Each training round:

    - the model Flower sends is the base: on an empty ``branch`` it is committed as the
      initial model; otherwise it must be the branch tip (to continue a run, start Flower
      from ``params_to_arrays(repo.read_params("main"))``);
    - every reply is checked at the door and, if it passes, recorded as an update commit
      (one parent: the base; metadata: ``fedvc.round``, ``examples`` from the reply's
      ``num-examples``, its scalar ``metrics``, and ``flower: {node_id, message_id}``);
      a reply whose tensors differ in names, shapes or dtypes from the base, that holds
      NaN or Inf, or whose example count is missing is rejected, never stored, and listed
      in the merge commit's ``rejected`` with its Flower provenance;
    - the admitted updates are merged by ``fedvc.round.merge_round`` (the gRPC
      coordinator's code path) into a signed octopus merge commit whose parents are the
      base and every update, sorted; ``branch`` moves to it by compare-and-swap and its
      snapshot goes back to Flower as the new global model.

    Flower clients do not sign anything, so update commits are signed by ``signer`` on the
    clients' behalf: the signature vouches that the server recorded what node
    ``node_id`` sent in message ``message_id``, not that the node produced it. Fleets that
    need client signatures use fedvc's own client (``fedvc-client``).

    Strategies that merge with Fisher information (``fisher``, ``matched_fisher``) ask
    clients for it with ``config["fisher"] = True``; a client answers with a second
    ``ArrayRecord`` under ``fisher_key`` holding its diagonal Fisher, or is rejected.
    ``regmean`` asks the same way for each linear layer's input Gram matrix
    (``config["grams"] = True``, an ``ArrayRecord`` under ``grams_key`` keyed by the
    layer's weight name). Both are recorded as snapshots the update commit names, as
    fedvc's own clients attach them.
    """

    def __init__(
        self,
        strategy: MergeStrategy | str,
        repo: Repository,
        signer: SigningKey,
        *,
        params: Mapping[str, Any] | None = None,
        branch: str = "main",
        fisher_key: str = "fisher",
        grams_key: str = "grams",
        clock: Callable[[], float] = time.time,
        **fedavg_options: Any,
    ) -> None:
        super().__init__(**fedavg_options)
        self.merge_strategy = _build(strategy, params)
        self.repo = repo
        self.signer = signer
        self.branch = branch
        self.fisher_key = fisher_key
        self.grams_key = grams_key
        self.clock = clock
        self.merges: list[ObjectId] = []
        """The merge commits this strategy wrote, in order."""
        self._fisher = uses_fisher(self.merge_strategy.spec)
        self._grams = uses_grams(self.merge_strategy.spec)
        self._strategy_state: State | None = None
        self._open: _OpenRound | None = None

    def summary(self) -> None:
        """Log the fedvc side of the configuration, then Flower's."""
        log(
            INFO,
            "\t├──> fedvc: merge with %s, history on %r",
            self.merge_strategy.spec,
            self.branch,
        )
        super().summary()

    # -- a round --------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Open a fedvc round on the model being sent, then let Flower sample and send."""
        params = arrays_to_params(arrays)
        base = self._base(params, server_round)
        if self._strategy_state is None:
            self._strategy_state = starting_state(self.repo, self.merge_strategy, base)
        number = completed_rounds(self.repo.get_commit(base)) + 1
        state = open_round(number, base, RoundConfig(), 1, self.clock())
        self._open = _OpenRound(server_round, state, params)
        if self._fisher:
            config["fisher"] = True
        if self._grams:
            config["grams"] = True
        messages: Iterable[Message] = super().configure_train(server_round, arrays, config, grid)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record, check and merge the replies; return the merged model to Flower.

        With no admissible reply nothing is written and Flower keeps its model (the
        rejections are logged); the next round reopens on the same base.
        """
        opened = self._open
        if opened is None or opened.server_round != server_round:
            raise RoundError(
                f"aggregate_train was called for round {server_round} before configure_train "
                "opened it; FedvcStrategy records the base in configure_train, so run it "
                "through strategy.start(...) or call configure_train first"
            )
        self._open = None
        state = opened.state
        accepted: list[RecordDict] = []  # for Flower's metric aggregation
        provenance: dict[ObjectId, dict[str, Any]] = {}
        base = opened.base  # hashed in configure_train: it is the tip's snapshot
        rejected_provenance: list[dict[str, Any]] = []
        failures = 0
        for message in replies:
            if message.has_error():
                failures += 1
                log(WARNING, "fedvc: %s failed: %s", _node(message), message.error.reason)
                continue
            try:
                reply = self._check(message, base)
                admitted = self._record(state, reply)
                if admitted.commit in provenance:
                    raise UpdateRejected("duplicate", f"update {admitted.commit} arrived twice")
            except UpdateRejected as error:
                log(WARNING, "fedvc: %s", error)
                recorded = len(state.rejected)
                state = reject(state, Rejected("", "", error.reason, error.detail))
                if len(state.rejected) > recorded:  # kept in full, so give its origin
                    rejected_provenance.append(_provenance(message))
                continue
            state = replace(state, admitted=(*state.admitted, admitted))
            accepted.append(message.content)
            provenance[admitted.commit] = reply.provenance
        if not state.admitted:
            log(WARNING, "fedvc: round %s has no admissible update; nothing merged", state.number)
            return None, None
        merged = self._merge(state, base, provenance, rejected_provenance, server_round, failures)
        metrics = self.train_metrics_aggr_fn(accepted, self.weighted_by_key)
        return params_to_arrays({name: merged[name] for name in base}), metrics

    # -- inside -----------------------------------------------------------------------

    def _base(self, params: dict[str, np.ndarray], server_round: int) -> ObjectId:
        """The commit whose model Flower is sending: the branch tip, or a new initial commit."""
        ref = branch_ref(self.branch)
        tip = self.repo.refs.get_ref(ref)
        if tip is None:
            return self.repo.commit_params(
                params,
                "initial model (Flower initial_arrays)",
                branch=self.branch,
                signer=self.signer,
            )
        if self.repo.get_commit(tip).snapshot == snapshot_id(params):  # content addressing
            return tip
        raise RoundError(
            f"Flower round {server_round} sends a model that is not the tip of branch "
            f"{self.branch!r} ({short_id(tip)}), so its updates would not branch from the "
            f"history; start Flower from the tip (initial_arrays=params_to_arrays("
            f"repo.read_params({self.branch!r}))) or record this run on a new branch "
            f"(FedvcStrategy(..., branch='flower-run'))"
        )

    def _check(self, message: Message, base: ParamMap) -> _Reply:
        """Check one reply at the door: one model, its example count, metrics, Fisher, Grams."""
        content = message.content
        where = _node(message)
        attached = (self.fisher_key, self.grams_key)
        models = {k: v for k, v in content.array_records.items() if k not in attached}
        model = models.get(self.arrayrecord_key, next(iter(models.values())) if models else None)
        if model is None or (len(models) > 1 and self.arrayrecord_key not in models):
            raise UpdateRejected(
                "structure",
                f"{where} replied with ArrayRecords {sorted(content.array_records)}; expected "
                f"one model (under {self.arrayrecord_key!r})",
            )
        examples, metrics = _metrics(where, content, self.weighted_by_key)
        params = _tensors(where, "model", model, base)
        fisher = grams = None
        if self._fisher:
            record = self._attached(content, self.fisher_key, where, "diagonal Fisher")
            fisher = _tensors(where, "Fisher", record, base)
        if self._grams:
            record = self._attached(content, self.grams_key, where, "layer input Grams")
            grams = _grams(where, record, base)
        return _Reply(params, examples, metrics, fisher, grams, _provenance(message))

    def _attached(self, content: RecordDict, key: str, where: str, what: str) -> ArrayRecord:
        """The ArrayRecord under ``key`` the round's strategy needs from every client."""
        if key not in content.array_records:
            raise UpdateRejected(
                "bad_metadata",
                f"{where} sent no {what}; this round merges with {self.merge_strategy.spec} "
                f"and needs each client's {what} as ArrayRecord {key!r}",
            )
        return content.array_records[key]

    def _record(self, state: RoundState, reply: _Reply) -> Admitted:
        """Write the update commit a fedvc client would have written, signed for the node."""
        metadata: dict[str, Any] = {
            ROUND_KEY: state.number,
            "examples": reply.examples,
            "metrics": reply.metrics,
            "flower": reply.provenance,
        }
        fisher = grams = None
        if reply.fisher is not None:
            fisher = metadata["fisher"] = self.repo.write_snapshot(reply.fisher)
        if reply.grams is not None:
            grams = metadata["grams"] = self.repo.write_snapshot(reply.grams)
        commit = self.repo.write_commit(
            self.repo.write_snapshot(reply.params),
            parents=[state.base],
            message=f"round {state.number}: update from Flower node {reply.provenance['node_id']}",
            metadata=metadata,
            signer=self.signer,
        )
        return Admitted(commit, self.signer.key_id, reply.examples, reply.metrics, fisher, grams)

    def _merge(
        self,
        state: RoundState,
        base: ParamMap,
        provenance: Mapping[ObjectId, dict[str, Any]],
        rejected_provenance: Sequence[dict[str, Any]],
        server_round: int,
        failures: int,
    ) -> dict[str, np.ndarray]:
        """Merge as the coordinator does, write the octopus commit, move the branch."""
        assert self._strategy_state is not None  # loaded when the round opened
        spec = self.merge_strategy.spec
        updates = [admitted_update(self.repo, a, spec) for a in state.admitted]
        result = merge_round(
            state, base, updates, self.merge_strategy, self._strategy_state, closed_at=self.clock()
        )
        record = result.metadata["round"]
        for participant in record["participants"]:
            participant["flower"] = provenance[participant["commit"]]
        for rejection, origin in zip(record["rejected"], rejected_provenance, strict=True):
            rejection["flower"] = origin
        record["flower"] = {"server_round": server_round, "failures": failures}
        oid = record_merge(
            self.repo,
            state,
            result,
            signer=self.signer,
            branch=self.branch,
            message=f"round {state.number}: merge {len(updates)} Flower updates with {spec}",
        )
        self._strategy_state = result.strategy_state
        self.merges.append(oid)
        log(INFO, "fedvc: round %s merged into %s", state.number, short_id(oid))
        return result.params


def _build(strategy: MergeStrategy | str, params: Mapping[str, Any] | None) -> MergeStrategy:
    if isinstance(strategy, MergeStrategy):
        if params:
            raise MergeError(
                f"params {dict(params)} are for a strategy given by name; {strategy.spec} "
                "is already built"
            )
        return strategy
    built = make(strategy, params)
    if not isinstance(built, MergeStrategy):
        raise MergeError(
            f"{strategy!r} is an update transform, not a strategy; combine it with one "
            f"(fedvc.merge.chain({strategy}(...), fedavg())) and pass the result"
        )
    return built


def _node(message: Message) -> str:
    return f"Flower node {message.metadata.src_node_id}"


def _provenance(message: Message) -> dict[str, Any]:
    return {"node_id": int(message.metadata.src_node_id), "message_id": message.metadata.message_id}


def _metrics(where: str, content: RecordDict, key: str) -> tuple[int, dict[str, float]]:
    """The reply's example count and its scalar metrics (lists are Flower's, not recorded)."""
    records = list(content.metric_records.values())
    if len(records) != 1:
        raise UpdateRejected(
            "bad_metadata", f"{where} replied with {len(records)} MetricRecords; expected one"
        )
    record = records[0]
    examples = record.get(key)
    if (
        not isinstance(examples, (int, float))
        or isinstance(examples, bool)
        or not float(examples).is_integer()
        or examples < 1
    ):
        raise UpdateRejected(
            "bad_metadata",
            f"{where}: metric {key!r} must be a positive whole number of training examples, "
            f"got {examples!r}",
        )
    metrics: dict[str, float] = {}
    for name, value in record.items():
        if name == key or isinstance(value, list):
            continue
        if isinstance(value, bool) or not math.isfinite(value):
            raise UpdateRejected(
                "bad_metadata", f"{where}: metric {name!r} must be a finite number, got {value!r}"
            )
        metrics[name] = float(value)
    return int(examples), metrics


def _read(where: str, what: str, record: ArrayRecord) -> dict[str, np.ndarray]:
    try:
        return arrays_to_params(record)
    except (TensorError, TypeError, ValueError) as exc:
        raise UpdateRejected("structure", f"{where}: the {what} cannot be read: {exc}") from None


def _grams(where: str, record: ArrayRecord, base: ParamMap) -> dict[str, np.ndarray]:
    """The record's Grams, if each is a finite square Gram of one of the base's layers."""
    grams = _read(where, "Grams", record)
    try:
        check_grams(params_layout(base), params_layout(grams))
        check_values("Grams", grams)
    except UpdateRejected as rejection:
        raise UpdateRejected(rejection.reason, f"{where}: {rejection.detail}") from None
    return grams


def _tensors(where: str, what: str, record: ArrayRecord, base: ParamMap) -> dict[str, np.ndarray]:
    """The record's tensors, if they have the base's names, dtypes and shapes, all finite."""
    params = _read(where, what, record)
    try:
        check_structure(what, params_layout(base), params_layout(params), fisher=what == "Fisher")
        check_values(what, params, fisher=what == "Fisher")
    except UpdateRejected as rejection:
        listed = all(n.isdigit() for n in params) and not any(n.isdigit() for n in base)
        hint = (
            "; the client built its ArrayRecord from a list of arrays, which numbers them: "
            "reply with the names it received (a dict of Arrays or a state_dict)"
        )
        detail = f"{where}: {rejection.detail}{hint if listed else ''}"
        raise UpdateRejected(rejection.reason, detail) from None
    return params
