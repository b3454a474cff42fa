"""Matched averaging: align hidden units across updates, then average.

Two networks that compute the same function can order their hidden units differently;
averaging them unit by unit then mixes unrelated units and collapses. ``align`` removes
that symmetry before any averaging strategy runs:

- with a round base, every update is weight-matched to the base, one at a time (so the
  transform streams and the coordinator holds O(model));
- without one (models trained from different initialisations), the whole set is put into
  one basis together with Git Re-Basin's MergeMany, not each to one arbitrary member.

Anything attached to an update (its diagonal Fisher, optimizer moments) is permuted with
it, so ``chain(align(), fisher())`` weighs each unit by its own curvature.

References:
    Ainsworth, Hayase, Srinivasa, "Git Re-Basin: Merging Models modulo Permutation
    Symmetries", ICLR 2023 (weight matching, MergeMany).
    Wang et al., "Federated Learning with Matched Averaging", ICLR 2020 (FedMA).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from fedvc.align import PermutationSpec, apply_permutation, infer_spec, merge_many, weight_matching
from fedvc.merge.base import (
    MergeError,
    MergeStrategy,
    StrategySpec,
    Update,
    UpdateTransform,
    ordered,
    require_updates,
)
from fedvc.merge.compose import chain
from fedvc.merge.fedavg import fedavg
from fedvc.merge.fisher import fisher
from fedvc.tensors import ParamMap


def permute_update(
    spec: PermutationSpec, perms: Mapping[str, Any], update: Update, params: ParamMap | None = None
) -> Update:
    """``update`` with its params, Fisher, Grams and extras all permuted by ``perms``.

    ``params`` may pass the already permuted params (MergeMany computes them). Extras
    (optimizer moments) usually cover the trainable tensors only, not buffers such as
    running statistics, so they are permuted where present (strict=False).
    """
    return update.with_params(
        apply_permutation(spec, perms, update.params) if params is None else params,
        fisher=None if update.fisher is None else apply_permutation(spec, perms, update.fisher),
        grams=None if update.grams is None else _permute_grams(spec, perms, update.grams),
        extras={
            k: apply_permutation(spec, perms, v, strict=False) for k, v in update.extras.items()
        },
    )


def _permute_grams(
    spec: PermutationSpec, perms: Mapping[str, Any], grams: ParamMap
) -> dict[str, np.ndarray]:
    """Each layer's input Gram with its rows and columns in the permuted input order (the
    bias's ones column, last, stays): ``G'[j, k] = G[p[j], p[k]]``."""
    result = dict(grams)
    for name, gram in grams.items():
        axes = spec.axes_to_perm.get(name, ())
        inputs = axes[1] if len(axes) > 1 else None
        if inputs is None:
            continue
        if name in spec.views:
            raise MergeError(
                f"the Gram of {name!r} cannot be permuted: the spec reshapes that weight, so "
                "its inputs are not one permuted axis; merge it without alignment"
            )
        order = np.asarray(perms[inputs])
        if gram.shape[0] == order.size + 1:
            order = np.append(order, order.size)
        result[name] = np.asarray(gram)[np.ix_(order, order)]
    return result


def align(
    spec: PermutationSpec | Mapping[str, Any] | str | None = None,
    *,
    max_iter: int = 100,
    seed: int = 0,
) -> UpdateTransform:
    """Permute every update's hidden units into one basis (weight matching).

    ``spec`` describes the model's permutation symmetry (a ``PermutationSpec``, its JSON,
    or None to infer it for plain MLP/CNN state_dicts).
    """
    given = None if spec is None else _as_spec(spec)
    params: dict[str, Any] = {"max_iter": max_iter, "seed": seed}
    if given is not None:
        params["spec"] = given.to_dict()
    transform_spec = StrategySpec("align", params)
    # Inferring the symmetry walks the whole state_dict; a streamed round aligns every
    # update against one base, so infer it once per base. The memo holds the base itself,
    # not just its id(), so the id cannot be reused by another object while it is cached.
    inferred: list[tuple[ParamMap, PermutationSpec]] = []

    def spec_for(model: ParamMap) -> PermutationSpec:
        if given is not None:
            return given
        if inferred and inferred[0][0] is model:
            return inferred[0][1]
        symmetry = infer_spec(model)
        inferred[:] = [(model, symmetry)]
        return symmetry

    def apply_one(base: ParamMap | None, update: Update) -> Update:
        if base is None:
            raise MergeError(
                "align takes updates one at a time only against a round base; without a "
                "common base it aligns the whole set together: call merge(), not accumulate()"
            )
        symmetry = spec_for(base)
        perms = weight_matching(symmetry, base, update.params, max_iter=max_iter, seed=seed)
        return permute_update(symmetry, perms, update)

    def apply(base: ParamMap | None, updates: Sequence[Update]) -> list[Update]:
        updates = ordered(updates)
        require_updates(updates, "align")
        if base is not None:
            return [apply_one(base, update) for update in updates]
        symmetry = spec_for(updates[0].params)
        result = merge_many(
            symmetry,
            [u.params for u in updates],
            weights=[u.weight for u in updates]
            if sum(u.weight > 0 for u in updates) >= 2
            else None,
            max_iter=max_iter,
            seed=seed,
        )
        return [
            permute_update(symmetry, perms, update, model)
            for update, perms, model in zip(updates, result.perms, result.models, strict=True)
        ]

    return UpdateTransform(transform_spec, apply, apply_one)


def _as_spec(spec: PermutationSpec | Mapping[str, Any] | str) -> PermutationSpec:
    if isinstance(spec, PermutationSpec):
        return spec
    if isinstance(spec, str):
        return PermutationSpec.from_json(spec)
    return PermutationSpec.from_dict(dict(spec))


def _named(name: str, params: dict[str, Any], inner: MergeStrategy) -> MergeStrategy:
    """``inner`` recorded under its own name, so a merge commit says ``matched``."""
    return replace(inner, spec=StrategySpec(name, params))


def matched(max_iter: int = 100, seed: int = 0) -> MergeStrategy:
    """FedAvg after weight-matching alignment (``chain(align(), fedavg())``)."""
    return _named(
        "matched",
        {"max_iter": max_iter, "seed": seed},
        chain(align(max_iter=max_iter, seed=seed), fedavg()),
    )


def matched_fisher(max_iter: int = 100, seed: int = 0, epsilon: float = 1e-8) -> MergeStrategy:
    """Fisher-weighted merge after weight-matching alignment (``chain(align(), fisher())``)."""
    inner = chain(align(max_iter=max_iter, seed=seed), fisher(epsilon=epsilon))
    return _named("matched_fisher", {"max_iter": max_iter, "seed": seed, "epsilon": epsilon}, inner)
