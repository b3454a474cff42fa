"""The client's loop: ask for work, branch from the base, train, commit, sign, submit.

A participant holds its own repository (its object cache: what it already has never
travels again), its signing key and the user's ``Task``. Everything it says to the
coordinator goes through a ``CoordinatorLink``, so the same loop runs in a simulation (in
process) and on a device talking gRPC.

An update is an ordinary commit whose one parent is the round's base, signed by the
client, with the round number, example count, metrics and (when the round asks for it)
the snapshot id of the client's diagonal Fisher in its metadata: everything the
coordinator weighs it by is covered by the client's signature.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from fedvc.errors import FedvcError
from fedvc.objects import ObjectId
from fedvc.repo import Repository
from fedvc.round import ROUND_KEY
from fedvc.round_store import commit_objects, wire_objects
from fedvc.signing import SigningKey
from fedvc.tensors import ParamMap
from fedvc.transport import CoordinatorLink, Finished, RoundOffer, Verdict, Wait


class TaskError(FedvcError):
    """The user's task returned something a round cannot use."""


@dataclass(frozen=True)
class TrainResult:
    """What one round of local training produced.

    ``params`` is the whole model after training (same names, shapes and dtypes as the
    base); ``examples`` the number of training examples it saw (its weight in FedAvg);
    ``metrics`` finite numbers such as ``loss`` and ``accuracy``; ``fisher`` the diagonal
    Fisher information when the round's config has ``fisher = true``; ``grams`` the Gram
    matrix of each linear layer's inputs (``fedvc_client.regmean.layer_grams``) when it
    has ``grams = true``.
    """

    params: ParamMap
    examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    fisher: ParamMap | None = None
    grams: ParamMap | None = None


class Task(Protocol):
    """The user's code: train a model for one round from the base weights.

    ``config`` is the round's training configuration (the coordinator's ``[train]``
    table, plus ``round`` and ``fisher``). Tasks that can also evaluate a model (for a
    simulation's central evaluation) provide ``evaluate(params) -> metrics``.
    """

    def train(self, params: ParamMap, config: Mapping[str, Any]) -> TrainResult: ...


@dataclass(frozen=True)
class Submitted:
    """One round this participant took part in: its update commit and the verdict."""

    round: int
    commit: ObjectId
    verdict: Verdict


class Participant:
    """One client: ``run()`` takes part in rounds until the coordinator says it is done."""

    def __init__(
        self,
        link: CoordinatorLink,
        task: Task,
        key: SigningKey,
        repo: Repository,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.link = link
        self.task = task
        self.key = key
        self.repo = repo
        self.sleep = sleep
        self.key_id = str(key.key_id)
        self._last: tuple[int, ObjectId, ObjectId] | None = None  # round, base, update

    def run(
        self,
        *,
        max_rounds: int | None = None,
        on_round: Callable[[Submitted], None] | None = None,
    ) -> list[Submitted]:
        """Take part in rounds until ``Finished`` (or ``max_rounds`` submissions);
        ``on_round`` hears each submission and its verdict."""
        done: list[Submitted] = []
        while max_rounds is None or len(done) < max_rounds:
            offer = self.link.next_round(self.key_id)
            if isinstance(offer, Finished):
                break
            if isinstance(offer, Wait):
                self.sleep(offer.seconds)
                continue
            done.append(self.take_part(offer))
            if on_round is not None:
                on_round(done[-1])
        return done

    def step(self) -> Submitted | Wait | Finished:
        """Ask once; take part if offered work (what a simulation schedules client by client)."""
        offer = self.link.next_round(self.key_id)
        return self.take_part(offer) if isinstance(offer, RoundOffer) else offer

    def take_part(self, offer: RoundOffer) -> Submitted:
        """Sync the base, train, commit and sign the update, upload it, submit it.

        Offered a round it already trained for (the coordinator restarted before the
        round closed), it submits the same update again instead of training twice.
        """
        if self._last is not None and self._last[:2] == (offer.number, offer.base):
            commit = self._last[2]
        else:
            commit = self.train(offer)
            self._last = (offer.number, offer.base, commit)
        self.upload(commit)
        return Submitted(offer.number, commit, self.link.submit(offer.number, commit))

    def train(self, offer: RoundOffer) -> ObjectId:
        """Branch from the offered base and commit the task's result, signed."""
        self.download(offer.base)
        base = self.repo.read_params(offer.base)
        config = {**offer.config, "round": offer.number}
        result = self.task.train(base, config)
        check_result(result, offer.config)
        metadata: dict[str, Any] = {
            ROUND_KEY: offer.number,
            "examples": int(result.examples),
            "metrics": {k: float(v) for k, v in result.metrics.items()},
        }
        if result.fisher is not None:
            metadata["fisher"] = self.repo.write_snapshot(result.fisher)
        if result.grams is not None:
            metadata["grams"] = self.repo.write_snapshot(result.grams)
        snapshot = self.repo.write_snapshot(result.params)
        return self.repo.write_commit(
            snapshot,
            parents=[offer.base],
            message=f"round {offer.number}: update from {self.key_id}",
            metadata=metadata,
            signer=self.key,
        )

    def download(self, commit: ObjectId) -> int:
        """Fetch the objects of ``commit`` this participant lacks; return how many."""
        wanted = [
            oid for oid in self.link.list_objects(commit) if not self.repo.objects.contains(oid)
        ]
        for obj in self.link.get_objects(wanted):
            obj.store_in(self.repo.objects)
        return len(wanted)

    def upload(self, commit: ObjectId) -> int:
        """Send the coordinator the objects of ``commit`` (and its Fisher) it lacks."""
        needed = self.link.missing(commit_objects(self.repo, commit, attached=True))
        self.link.put_objects(wire_objects(self.repo, needed))
        return len(needed)


def check_result(result: object, config: Mapping[str, Any]) -> None:
    """Raise ``TaskError`` unless ``result`` is a ``TrainResult`` the round whose training
    ``config`` it answers can use (with a Fisher, or Grams, when the config asks).

    Public so that every runner of a ``Task`` (this participant, the Flower client
    adapter) reports a task's mistakes in the same words.
    """
    if not isinstance(result, TrainResult):
        raise TaskError(
            f"a task's train() must return fedvc.participant.TrainResult, got "
            f"{type(result).__name__}"
        )
    if (
        isinstance(result.examples, bool)
        or not isinstance(result.examples, int)
        or result.examples < 1
    ):
        raise TaskError(
            f"TrainResult.examples must be a positive int (training examples seen), got "
            f"{result.examples!r}"
        )
    if config.get("fisher") and result.fisher is None:
        raise TaskError(
            "this round merges with Fisher information (config fisher = true), but the "
            "task returned no TrainResult.fisher"
        )
    if config.get("grams") and result.grams is None:
        raise TaskError(
            "this round merges with each layer's input Gram matrix (config grams = true), "
            "but the task returned no TrainResult.grams (fedvc_client.regmean.layer_grams)"
        )
