"""Any fedvc ``Task`` as a plain Flower ``ClientApp``: the client side of the Flower bridge.

A fedvc task is a function of the base weights and a training config that returns the
trained weights, their example count and metrics (``fedvc.participant.Task``). That is
also what a Flower ``ClientApp`` does with a train message, so ``task_client_app`` runs a
task unchanged on a Flower fleet (a SuperLink with SuperNodes, or Flower's simulation
engine), under Flower's own strategies or ``fedvc.compat.flower.FedvcStrategy``. The one
thing Flower does not say is which client a node is; the node's ``partition-id`` (which
Flower's simulation engine sets, and a deployed SuperNode gets from ``--node-config
"partition-id=3"``) picks the task.

Flower's and fedvc's names line up: the ConfigRecord is the task's ``config`` (with
Flower's ``server-round`` also given as ``round``, the key fedvc tasks seed their
shuffling from), the reply's MetricRecord carries ``num-examples`` (the key Flower's
``FedAvg`` weighs by) and the task's metrics, and a diagonal Fisher, when the round asks
for one (``FedvcStrategy`` with a Fisher strategy sets ``config["fisher"]``), goes back
as a second ArrayRecord under ``fisher``, where ``FedvcStrategy`` looks for it; so do
a task's layer Grams, under ``grams``, when the round asks for them (``regmean``).

Lives apart from ``flower.py`` (the server side) so that each stays a module one can
read at a sitting; both are the only importers of ``flwr`` (see DESIGN.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord, MetricRecordValues, RecordDict
from flwr.clientapp import ClientApp

from fedvc.compat.flower import arrays_to_params, params_to_arrays
from fedvc.participant import Task, TaskError, check_result
from fedvc.tensors import ParamMap

PARTITION_ID = "partition-id"
"""The node-config key naming the client a Flower node is (set by Flower's simulation)."""


def task_client_app(
    make_task: Callable[[int], Task],
    *,
    arrayrecord_key: str = "arrays",
    weighted_by_key: str = "num-examples",
    fisher_key: str = "fisher",
    grams_key: str = "grams",
    timing_key: str | None = None,
) -> ClientApp:
    """A Flower ``ClientApp`` whose train messages run ``make_task(partition_id).train``.

    ``make_task`` is called on every train message, in whatever process Flower runs the
    app in (a Ray actor in the simulation engine, so it must pickle: a module-level
    function or an instance of a module-level class), and should cache what is costly to
    build, such as a data set. The keys match Flower's ``FedAvg`` defaults; pass the same
    ``arrayrecord_key`` and ``weighted_by_key`` as the strategy if it uses others.
    ``timing_key``, when given, adds the seconds spent building and training the task to
    the reply's metrics, which is how a benchmark tells the framework's time from the
    task's.

    Only train messages are answered: evaluate centrally (``strategy.start(...,
    evaluate_fn=...)``) or set ``fraction_evaluate=0.0`` on the strategy.
    """
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        started = time.perf_counter()
        content = message.content
        received = _model(content, arrayrecord_key)
        base = arrays_to_params(received)
        config = _config(content)
        task = make_task(_partition_id(context))
        result = task.train(base, config)
        check_result(result, config)
        metrics: dict[str, MetricRecordValues] = {weighted_by_key: result.examples}
        metrics.update({name: float(value) for name, value in result.metrics.items()})
        if timing_key is not None:
            metrics[timing_key] = time.perf_counter() - started
        reply = RecordDict(
            {
                arrayrecord_key: params_to_arrays(_in_order(result.params, base)),
                "metrics": MetricRecord(metrics),
            }
        )
        if result.fisher is not None:
            reply[fisher_key] = params_to_arrays(_in_order(result.fisher, base))
        if result.grams is not None:
            reply[grams_key] = params_to_arrays(result.grams)
        return Message(reply, reply_to=message)

    return app


def _partition_id(context: Context) -> int:
    value = context.node_config.get(PARTITION_ID)
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise TaskError(
            f"this ClientApp runs the fedvc task of the node's {PARTITION_ID!r}, but the "
            f"node config has {PARTITION_ID}={value!r}; Flower's simulation engine sets it, "
            f'and a SuperNode gets it with --node-config "{PARTITION_ID}=3"'
        )
    return int(value)


def _model(content: RecordDict, key: str) -> ArrayRecord:
    """The model the server sent: the ArrayRecord under ``key``, or the only one."""
    records = content.array_records
    if key in records:
        return records[key]
    if len(records) == 1:
        return next(iter(records.values()))
    raise TaskError(
        f"the train message holds ArrayRecords {sorted(records)}; expected the model under "
        f"{key!r} (pass the strategy's arrayrecord_key to task_client_app)"
    )


def _config(content: RecordDict) -> dict[str, Any]:
    """The task's config: every ConfigRecord's entries, and the round as fedvc names it."""
    config: dict[str, Any] = {}
    for record in content.config_records.values():
        config.update(record)
    if "server-round" in config:
        config.setdefault("round", config["server-round"])
    return config


def _in_order(params: ParamMap, base: ParamMap) -> ParamMap:
    """``params`` in the order the server sent its arrays (Flower clients reading a list
    rely on it); a task that renamed tensors keeps its own order, for the door to judge."""
    if set(params) != set(base):
        return params
    return {name: params[name] for name in base}
