"""Inferring the permutation spec of a plain feed-forward network from its state_dict.

A state_dict lists tensors in the order the modules were registered, which for an
``nn.Sequential`` MLP or CNN is the order data flows through them. Reading it in order
recognises each module by the shapes of its tensors:

* a Linear layer: a 2-D ``weight`` ``(out, in)`` and optionally a 1-D ``bias``;
* a Conv layer: a 3-, 4- or 5-D ``weight`` ``(out, in, *kernel)`` and optionally a bias;
* a normalisation layer (BatchNorm, LayerNorm over the features): 1-D ``weight``,
  ``bias``, ``running_mean``, ``running_var`` of the current width.

Every Linear or Conv layer but the last gets a permutation ``P_<module>`` on its output,
which also acts on the normalisation after it and on the input of the next layer. A
Linear layer after a Conv layer whose input is ``C·k`` features (``flatten`` of ``C``
channels over ``k`` spatial positions) gets the view ``(out, C, k)``, so the channel
permutation moves whole blocks of ``k`` columns, exactly as flattening lays them out.
Scalar tensors (``num_batches_tracked``) are not listed and so never permuted.

What a state_dict cannot show, this cannot infer. Skip connections, attention and
branches tie permutations across layers in ways the tensor list does not reveal, and a
residual network of constant width *looks* like a chain: an inferred spec would permute
its blocks independently and break the model. Modules whose names suggest such blocks,
shapes that do not chain, and unrecognised tensors are refused with an error that says to
write the spec explicitly with ``PermutationSpec.from_axes`` (or pass ``--spec``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedvc.align.spec import AlignError, Axes, PermutationSpec
from fedvc.tensors import ParamMap

_NORM_LEAVES = frozenset({"weight", "bias", "running_mean", "running_var"})
_LAYER_LEAVES = frozenset({"weight", "bias"})
_BLOCK_HINTS = ("downsample", "shortcut", "skip", "residual", "attn", "attention", "qkv", "embed")
_EXPLICIT = (
    "write the spec explicitly with PermutationSpec.from_axes (dense_axes, conv_axes, "
    "norm_axes) and pass it instead (--spec SPEC.json on the command line)"
)


@dataclass(frozen=True)
class _Module:
    prefix: str
    shapes: dict[str, tuple[int, ...]]  # leaf name → shape, in state_dict order

    def name(self, leaf: str) -> str:
        return f"{self.prefix}.{leaf}" if self.prefix else leaf


def _modules(params: ParamMap) -> list[_Module]:
    """Group tensors into modules by name prefix, in order; scalars are left out."""
    modules: list[_Module] = []
    finished: set[str] = set()
    for name, array in params.items():
        shape = tuple(np.shape(array))
        if not shape:
            continue
        prefix, _, leaf = name.rpartition(".")
        for part in prefix.split("."):
            if any(hint in part.lower() for hint in _BLOCK_HINTS):
                raise AlignError(
                    f"cannot infer a permutation spec: tensor {name!r} belongs to what looks "
                    "like a residual, attention or embedding block, whose skip connections "
                    f"and shared axes a state_dict does not show; {_EXPLICIT}"
                )
        if modules and modules[-1].prefix == prefix:
            modules[-1].shapes[leaf] = shape
            continue
        if prefix in finished:
            raise AlignError(
                f"cannot infer a permutation spec: tensor {name!r} comes back to module "
                f"{prefix!r} after other modules, so the state_dict is not a simple chain; "
                f"{_EXPLICIT}"
            )
        if modules:
            finished.add(modules[-1].prefix)
        modules.append(_Module(prefix, {leaf: shape}))
    return modules


def _kind(module: _Module) -> str:
    leaves, shapes = set(module.shapes), module.shapes
    weight = shapes.get("weight")
    if weight is not None and len(weight) >= 2:
        if not leaves <= _LAYER_LEAVES or len(weight) > 5:
            raise AlignError(
                f"cannot infer a permutation spec: module {module.prefix!r} has tensors "
                f"{sorted(leaves)} with a {len(weight)}-D weight, which is neither a Linear "
                f"nor a Conv layer (weight and bias only); {_EXPLICIT}"
            )
        bias = shapes.get("bias")
        if bias is not None and bias != weight[:1]:
            raise AlignError(
                f"cannot infer a permutation spec: {module.name('bias')!r} has shape "
                f"{list(bias)}, expected [{weight[0]}] to match {module.name('weight')!r} "
                f"of shape {list(weight)}; {_EXPLICIT}"
            )
        return "linear" if len(weight) == 2 else "conv"
    sizes = {s[0] if len(s) == 1 else -1 for s in shapes.values()}
    if leaves <= _NORM_LEAVES and len(sizes) == 1 and -1 not in sizes:
        return "norm"
    found = ", ".join(f"{module.name(leaf)!r} {list(s)}" for leaf, s in shapes.items())
    raise AlignError(
        f"cannot infer a permutation spec: module {module.prefix or '(root)'!r} with tensors "
        f"{found} is not a Linear, Conv or per-feature normalisation layer; {_EXPLICIT}"
    )


def infer_spec(params: ParamMap) -> PermutationSpec:
    """Infer the spec of a plain chain of Linear/Conv layers with optional normalisation.

    ``params`` must keep state_dict order (a dict does). Returns a spec with one
    permutation ``P_<module>`` per hidden layer; raises ``AlignError`` with the reason and
    what to do when the model is not such a chain. See the module docstring for what a
    state_dict can and cannot reveal: a residual network must get an explicit spec.
    """
    modules = _modules(params)
    kinds = [_kind(module) for module in modules]
    layers = [i for i, kind in enumerate(kinds) if kind != "norm"]
    if not layers:
        raise AlignError(
            "cannot infer a permutation spec: found no Linear or Conv weight (a 2- to 5-D "
            f"'weight' tensor) in {len(params)} tensor(s); {_EXPLICIT}"
        )
    axes: dict[str, Axes] = {}
    views: dict[str, tuple[int, ...]] = {}
    width: int | None = None  # features flowing out of the previous layer (None: the input)
    current: str | None = None  # the permutation acting on those features
    after_conv = False
    for i, (module, kind) in enumerate(zip(modules, kinds, strict=True)):
        if kind == "norm":
            size = next(iter(module.shapes.values()))[0]
            if width is not None and size != width:
                raise AlignError(
                    f"cannot infer a permutation spec: normalisation {module.prefix!r} has "
                    f"{size} features but the layer before it outputs {width}, so the "
                    f"modules do not form a chain in state_dict order; {_EXPLICIT}"
                )
            for leaf in module.shapes:
                axes[module.name(leaf)] = (current,)
            continue
        weight = module.shapes["weight"]
        out, fan_in = weight[0], weight[1]
        p_out = None if i == layers[-1] else f"P_{module.prefix}"
        name = module.name("weight")
        if kind == "linear" and after_conv and width and fan_in != width and fan_in % width == 0:
            views[name] = (out, width, fan_in // width)  # flatten: channel-major blocks
            axes[name] = (p_out, current, None)
        elif width is None or fan_in == width:
            axes[name] = (p_out, current, *([None] * (len(weight) - 2)))
        else:
            raise AlignError(
                f"cannot infer a permutation spec: {name!r} of shape {list(weight)} expects "
                f"{fan_in} input features but the layer before it outputs {width}"
                + (" (not a whole number of blocks per channel)" if after_conv else "")
                + "; grouped or transposed convolutions, branches and skip connections are "
                f"invisible in a state_dict, so {_EXPLICIT}"
            )
        if "bias" in module.shapes:
            axes[module.name("bias")] = (p_out,)
        width, current, after_conv = out, p_out, kind == "conv"
    return PermutationSpec(axes, views)
