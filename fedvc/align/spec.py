"""Which permutation acts on which axis of which tensor, and applying permutations.

Hidden units of a network can be reordered without changing what it computes: permute the
rows of one layer's weight and bias, the entries of the normalisation that follows, and the
columns of the next layer's weight, and every output is bit-for-bit the same. Two models
trained from different starting points therefore differ by an unknown permutation as well
as by what they learned, and averaging them without undoing it averages unrelated units.

A ``PermutationSpec`` records the symmetry as plain data: for each tensor, one entry per
axis, naming the permutation that acts on it or ``None``. One name may appear on several
axes of several tensors; that is how a residual stream, whose width is shared by every
block that adds to it, is tied to a single permutation. Tensors the spec does not list are
never permuted (``num_batches_tracked``, a model's input and output layers' fixed axes).

A permutation is an integer array ``p`` of its size; applying it to an axis means
``np.take(tensor, p, axis)``, so unit ``i`` of the result is unit ``p[i]`` of the input.

References:
    Ainsworth, Hayase, Srinivasa. "Git Re-Basin: Merging Models modulo Permutation
    Symmetries", ICLR 2023 (the ``PermutationSpec`` idea: axes → permutation names).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from fedvc.errors import FedvcError
from fedvc.tensors import ParamMap, TensorError, validate_name

SPEC_FORMAT = "fedvc-permutation-spec"
SPEC_VERSION = 1
_MAX_LISTED = 8

Axes = tuple[str | None, ...]
"""One entry per axis of a tensor: the permutation acting on it, or ``None``."""


class AlignError(FedvcError):
    """A permutation spec, a set of permutations or a pair of models cannot be aligned."""


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


def _perm_name(value: object, where: str) -> str | None:
    if value is None or (isinstance(value, str) and value):
        return value
    raise AlignError(
        f"{where}: a permutation name must be a non-empty string or null, got {value!r}"
    )


@dataclass(frozen=True)
class PermutationSpec:
    """The permutation symmetry of an architecture, as plain, JSON-serialisable data.

    ``views`` lets a permutation act on blocks of a flattened axis: a Linear layer after
    ``flatten`` sees ``C·H·W`` input features, ``C`` blocks of ``H·W``, so its weight of
    shape ``(out, C·H·W)`` is listed with view ``(out, C, H·W)`` and axes
    ``(None, "P_conv", None)``. Permutations act on the view; results keep the real shape.
    ``perm_to_axes`` is derived: permutation → every ``(tensor, axis)`` it acts on.
    """

    axes_to_perm: Mapping[str, Axes]
    views: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    perm_to_axes: Mapping[str, tuple[tuple[str, int], ...]] = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.axes_to_perm, Mapping):
            raise AlignError("axes_to_perm must map tensor names to one entry per axis")
        axes_to_perm: dict[str, Axes] = {}
        users: dict[str, list[tuple[str, int]]] = {}
        for name, axes in self.axes_to_perm.items():
            try:
                validate_name(name)
            except TensorError as exc:
                raise AlignError(f"permutation spec: {exc}") from None
            if isinstance(axes, str) or not isinstance(axes, Sequence):
                raise AlignError(
                    f"permutation spec entry {name!r} must list one permutation name or None "
                    f"per axis, got {axes!r}"
                )
            entry = tuple(_perm_name(p, f"tensor {name!r} axis {i}") for i, p in enumerate(axes))
            axes_to_perm[name] = entry
            for axis, perm in enumerate(entry):
                if perm is not None:
                    users.setdefault(perm, []).append((name, axis))
        if not isinstance(self.views, Mapping):
            raise AlignError("views must map tensor names to the shape to view them as")
        views: dict[str, tuple[int, ...]] = {}
        for name, view in self.views.items():
            if name not in axes_to_perm:
                raise AlignError(
                    f"permutation spec has a view for {name!r}, which it does not list"
                )
            if not isinstance(view, Sequence) or any(type(s) is not int or s < 0 for s in view):
                raise AlignError(f"view of {name!r} must be a list of sizes, got {view!r}")
            if len(view) != len(axes_to_perm[name]):
                raise AlignError(
                    f"view of {name!r} has {len(view)} axes but the spec lists "
                    f"{len(axes_to_perm[name])} entries for it: give one entry per view axis"
                )
            views[name] = tuple(view)
        object.__setattr__(self, "axes_to_perm", MappingProxyType(axes_to_perm))
        object.__setattr__(self, "views", MappingProxyType(views))
        perm_to_axes = {p: tuple(axes) for p, axes in users.items()}
        object.__setattr__(self, "perm_to_axes", MappingProxyType(perm_to_axes))

    @classmethod
    def from_axes(
        cls,
        *parts: Mapping[str, Sequence[str | None]],
        views: Mapping[str, Sequence[int]] | None = None,
    ) -> PermutationSpec:
        """Build a spec from one or more ``tensor → axes`` mappings, refusing duplicates.

        The parts are typically the outputs of ``dense_axes``, ``conv_axes`` and
        ``norm_axes``, one per layer, so a residual network reads like its forward pass.
        """
        merged: dict[str, Axes] = {}
        for part in parts:
            for name, axes in part.items():
                if name in merged:
                    raise AlignError(
                        f"tensor {name!r} is listed twice in the permutation spec: "
                        f"{list(merged[name])} and {list(axes)}; give each tensor one entry"
                    )
                merged[name] = tuple(axes)
        return cls(merged, {n: tuple(v) for n, v in (views or {}).items()})

    @property
    def perm_names(self) -> tuple[str, ...]:
        """Every permutation, in order of first appearance."""
        return tuple(self.perm_to_axes)

    def view_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape permutations see for tensor ``name`` of real shape ``shape``."""
        return self.views.get(name, shape)

    def check(self, params: ParamMap, *, strict: bool = True) -> dict[str, int]:
        """Check the spec against ``params`` and return each permutation's size.

        Every listed tensor must exist (unless ``strict`` is False: then absent ones, such
        as running statistics in an optimizer-moment map, are skipped), have one spec entry
        per axis (of its view, if it has one), and every permutation must have one size
        across all the axes it acts on.
        """
        missing = [name for name in self.axes_to_perm if name not in params]
        if missing and strict:
            raise AlignError(
                f"{len(missing)} tensor(s) named in the permutation spec are missing from the "
                f"params: {_listing([repr(n) for n in missing])}; the spec was written for "
                "another architecture (compare its names with the state_dict's keys), or "
                "pass strict=False to permute a partial map such as optimizer moments"
            )
        seen: dict[str, list[tuple[str, int, int]]] = {}
        for name, axes in self.axes_to_perm.items():
            if name not in params:
                continue
            shape = tuple(np.shape(params[name]))
            view = self.view_shape(name, shape)
            if name in self.views and math.prod(view) != math.prod(shape):
                raise AlignError(
                    f"tensor {name!r} of shape {list(shape)} cannot be viewed as {list(view)} "
                    f"({math.prod(view)} elements instead of {math.prod(shape)}); fix the view"
                )
            if len(view) != len(axes):
                raise AlignError(
                    f"tensor {name!r} has {len(view)} axes (shape {list(view)}) but the "
                    f"permutation spec lists {len(axes)}: {list(axes)}; give one entry per axis"
                )
            for axis, perm in enumerate(axes):
                if perm is not None:
                    seen.setdefault(perm, []).append((name, axis, view[axis]))
        sizes: dict[str, int] = {}
        for perm, uses in seen.items():
            distinct = {size for _, _, size in uses}
            if len(distinct) > 1:
                found = [f"{n!r} axis {a} has {s}" for n, a, s in uses]
                raise AlignError(
                    f"permutation {perm!r} must have one size, but the axes it acts on differ: "
                    f"{_listing(found)}; the spec ties axes of different widths, fix it"
                )
            sizes[perm] = uses[0][2]
        return sizes

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``format``, ``version``, ``axes_to_perm`` and ``views``."""
        return {
            "format": SPEC_FORMAT,
            "version": SPEC_VERSION,
            "axes_to_perm": {name: list(axes) for name, axes in self.axes_to_perm.items()},
            "views": {name: list(view) for name, view in self.views.items()},
        }

    def to_json(self) -> str:
        """The spec as JSON text for ``--spec SPEC.json``: one line per tensor, in order."""
        value = self.to_dict()
        lines = [f"  {json.dumps(key)}: {json.dumps(value[key])}," for key in ("format", "version")]
        for key in ("axes_to_perm", "views"):
            entries = [
                f"    {json.dumps(name, ensure_ascii=False)}: {json.dumps(entry)}"
                for name, entry in value[key].items()
            ]
            body = "{\n" + ",\n".join(entries) + "\n  }" if entries else "{}"
            lines.append(f"  {json.dumps(key)}: {body},")
        return "{\n" + "\n".join(lines).removesuffix(",") + "\n}\n"

    @classmethod
    def from_dict(cls, value: object) -> PermutationSpec:
        """Parse what ``to_dict`` produced (``views`` and the header fields are optional)."""
        if not isinstance(value, dict):
            raise AlignError(
                f"a permutation spec must be a JSON object, got {type(value).__name__}"
            )
        unknown = sorted(set(value) - {"format", "version", "axes_to_perm", "views"})
        if unknown:
            raise AlignError(f"permutation spec has unknown field(s) {unknown}")
        if value.get("format", SPEC_FORMAT) != SPEC_FORMAT:
            raise AlignError(f"format must be {SPEC_FORMAT!r}, got {value['format']!r}")
        if value.get("version", SPEC_VERSION) != SPEC_VERSION:
            raise AlignError(
                f"permutation spec version {value['version']!r} is not supported: this "
                f"fedvc reads version {SPEC_VERSION}; upgrade fedvc"
            )
        axes, views = value.get("axes_to_perm"), value.get("views", {})
        if not isinstance(axes, dict) or not isinstance(views, dict):
            raise AlignError(
                "permutation spec needs 'axes_to_perm' (tensor name → list of permutation "
                "names or null) and optionally 'views' (tensor name → list of sizes), "
                "both JSON objects"
            )
        for name, entry in {**axes, **views}.items():
            if not isinstance(entry, list):
                raise AlignError(f"permutation spec entry {name!r} must be a list, got {entry!r}")
        return cls(axes, views)

    @classmethod
    def from_json(cls, text: str | bytes) -> PermutationSpec:
        """Parse JSON text written by ``to_json`` (or by hand, following its format)."""
        try:
            value = json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise AlignError(f"permutation spec is not valid JSON: {exc}") from None
        return cls.from_dict(value)


def _join(prefix: str, leaf: str) -> str:
    return f"{prefix}.{leaf}" if prefix else leaf


def dense_axes(
    prefix: str, p_in: str | None, p_out: str | None, *, bias: bool = True
) -> dict[str, Axes]:
    """Spec entries of a Linear layer: ``weight`` (out, in) and ``bias`` (out)."""
    axes: dict[str, Axes] = {_join(prefix, "weight"): (p_out, p_in)}
    if bias:
        axes[_join(prefix, "bias")] = (p_out,)
    return axes


def conv_axes(
    prefix: str, p_in: str | None, p_out: str | None, *, bias: bool = True, spatial_dims: int = 2
) -> dict[str, Axes]:
    """Spec entries of a ConvNd layer: ``weight`` (out, in, *kernel) and ``bias`` (out)."""
    axes: dict[str, Axes] = {_join(prefix, "weight"): (p_out, p_in, *([None] * spatial_dims))}
    if bias:
        axes[_join(prefix, "bias")] = (p_out,)
    return axes


def norm_axes(prefix: str, p: str | None, *, running_stats: bool = False) -> dict[str, Axes]:
    """Spec entries of a normalisation over one feature axis (BatchNorm, LayerNorm(width)).

    ``weight`` and ``bias``, plus ``running_mean`` and ``running_var`` for BatchNorm
    (``running_stats=True``); ``num_batches_tracked`` is a scalar and stays unlisted.
    """
    leaves = ["weight", "bias"] + (["running_mean", "running_var"] if running_stats else [])
    return {_join(prefix, leaf): (p,) for leaf in leaves}


def identity_perms(sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The identity permutation for each ``name → size``."""
    return {name: np.arange(size, dtype=np.intp) for name, size in sizes.items()}


def random_perms(
    spec: PermutationSpec, params: ParamMap, *, seed: int = 0
) -> dict[str, np.ndarray]:
    """Uniformly random permutations for every permutation of ``spec`` (for tests, probes)."""
    rng = np.random.default_rng(seed)
    return {p: rng.permutation(n).astype(np.intp) for p, n in spec.check(params).items()}


def invert_perms(perms: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of each permutation: applying ``p`` then its inverse is the identity."""
    return {name: np.argsort(p, kind="stable").astype(np.intp) for name, p in perms.items()}


def check_perms(
    spec: PermutationSpec, perms: Mapping[str, np.ndarray], sizes: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """Validate ``perms`` for permutations of ``sizes`` and return them as index arrays."""
    unknown = sorted(set(perms) - set(spec.perm_to_axes))
    if unknown:
        raise AlignError(
            f"permutation(s) {unknown} are not in the spec (which has "
            f"{_listing([repr(p) for p in spec.perm_names])}); check the names"
        )
    missing = sorted(set(sizes) - set(perms))
    if missing:
        raise AlignError(f"no permutation given for {missing}: give one for every spec permutation")
    checked: dict[str, np.ndarray] = {}
    for name, size in sizes.items():
        p = np.asarray(perms[name])
        if p.ndim != 1 or p.shape[0] != size or p.dtype.kind not in "iu":
            raise AlignError(
                f"permutation {name!r} must be a 1-D integer array of size {size}, "
                f"got {p.dtype} of shape {list(p.shape)}"
            )
        if not np.array_equal(np.sort(p), np.arange(size)):
            raise AlignError(
                f"permutation {name!r} is not a permutation of 0..{size - 1}: "
                "it repeats or skips indices"
            )
        checked[name] = p.astype(np.intp, copy=False)
    return checked


def permute_tensor(
    array: np.ndarray, axes: Axes, perms: Mapping[str, np.ndarray], view: tuple[int, ...] | None
) -> np.ndarray:
    """``array`` with each axis (of ``view``, if given) taken in the order of its permutation."""
    result = array.reshape(view) if view is not None else array
    for axis, perm in enumerate(axes):
        if perm is not None:
            result = np.take(result, perms[perm], axis=axis)
    return result.reshape(array.shape)


def apply_permutation(
    spec: PermutationSpec,
    perms: Mapping[str, np.ndarray],
    params: ParamMap,
    *,
    strict: bool = True,
) -> dict[str, np.ndarray]:
    """Return ``params`` with every spec axis permuted; other tensors pass through as is.

    Anything with a model's shapes permutes the same way: its diagonal Fisher, optimizer
    moments. Such maps often lack buffers (running statistics); pass ``strict=False`` to
    skip spec tensors they do not have. Dtypes are kept; permuted tensors are new arrays.
    """
    sizes = spec.check(params, strict=strict)
    checked = check_perms(spec, perms, sizes) if strict else _present(spec, perms, sizes)
    result = dict(params)
    for name, axes in spec.axes_to_perm.items():
        if name in params and any(p is not None for p in axes):
            array = np.asarray(params[name])
            result[name] = permute_tensor(array, axes, checked, spec.views.get(name))
    return result


def _present(
    spec: PermutationSpec, perms: Mapping[str, np.ndarray], sizes: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """``check_perms`` for a partial map: unused permutations are still validated by name."""
    checked = check_perms(spec, {p: perms[p] for p in sizes if p in perms}, sizes)
    unknown = sorted(set(perms) - set(spec.perm_to_axes))
    if unknown:
        raise AlignError(f"permutation(s) {unknown} are not in the spec; check the names")
    return checked
