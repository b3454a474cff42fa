"""The bridge between PyTorch tensors and fedvc parameter maps.

This is the only core module that imports torch, so the rest of fedvc (storage, hashing,
merging) stays usable, and importable, without it. Conversions are zero-copy where that is
safe: a CPU tensor becomes a read-only numpy view of the same memory, so snapshotting a large
model costs nothing, and fedvc cannot write through the view into a parameter behind
autograd's back. The flip side is aliasing: training the module further changes the view, so
store or copy a snapshot before the next optimizer step if you need it frozen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch

from fedvc.tensors import ParamMap, TensorError, as_param_map, canonical_array, dtype_name

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "uint16": torch.uint16,
    "int16": torch.int16,
    "uint32": torch.uint32,
    "int32": torch.int32,
    "uint64": torch.uint64,
    "int64": torch.int64,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
}
"""fedvc canonical dtype name → torch dtype (the twelve of ``tensors.DTYPES``)."""
_SUPPORTED = frozenset(_TORCH_DTYPES.values())
_MAX_LISTED = 10


def tensor_to_numpy(t: object, name: str = "tensor") -> np.ndarray:
    """Return ``t`` as a read-only numpy array, copying only when the data is not on the CPU
    or not contiguous.

    ``t`` is typed ``object`` because ``tensors.to_numpy`` hands over anything from the torch
    namespace; anything that is not a dense, real ``torch.Tensor`` raises ``TensorError``.
    """
    if not isinstance(t, torch.Tensor):
        raise TensorError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _SUPPORTED:
        raise TensorError(_unsupported_dtype(t, name))
    if t.layout != torch.strided:
        raise TensorError(f"{name} has layout {t.layout}; convert it with .to_dense() first")
    if t.is_meta:
        raise TensorError(f"{name} is a meta tensor and has no data; materialize the module first")
    try:
        array = t.detach().cpu().resolve_neg().contiguous().numpy()
    except (RuntimeError, TypeError) as exc:  # exotic subclasses, unsupported dtypes
        raise TensorError(f"{name} ({t.dtype}) cannot be converted to numpy: {exc}") from exc
    array.flags.writeable = False
    return array


def _unsupported_dtype(t: torch.Tensor, name: str) -> str:
    dtype = str(t.dtype).removeprefix("torch.")
    if t.dtype == torch.bfloat16 or dtype.startswith("float8"):
        plan = "; bfloat16 storage is planned" if t.dtype == torch.bfloat16 else ""
        return (
            f"{name} has dtype {dtype}, which fedvc cannot store yet: convert with .float() "
            f"first{plan}"
        )
    if t.is_quantized:
        return f"{name} is quantized ({dtype}); store the float weights (.dequantize()) instead"
    if t.is_complex():
        return (
            f"{name} is complex ({dtype}); store its real and imaginary parts "
            "(torch.view_as_real) as separate float tensors"
        )
    return (
        f"{name} has unsupported dtype {dtype}; fedvc stores {', '.join(_TORCH_DTYPES)}: "
        "convert it (for example with .float()) first"
    )


def state_dict_to_params(state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Convert a PyTorch ``state_dict`` into a validated ``ParamMap`` (views, not copies)."""
    if not isinstance(state_dict, Mapping):
        raise TensorError(
            f"expected a state_dict (mapping of name to tensor), got {type(state_dict).__name__}"
        )
    converted: dict[str, object] = {}
    for key, value in state_dict.items():
        # converting here, not in as_param_map, so that errors name the tensor
        converted[key] = (
            tensor_to_numpy(value, f"tensor {key!r}") if isinstance(value, torch.Tensor) else value
        )
    return as_param_map(converted)


def params_to_state_dict(
    params: ParamMap, device: str | torch.device | None = None
) -> dict[str, torch.Tensor]:
    """Convert a ``ParamMap`` into torch tensors with exactly the same dtypes and shapes.

    A writable, aligned, native-order array is shared with its tensor (no copy); a read-only
    one, like those ``tensor_files.read_safetensors`` returns, is copied first, because torch
    has no read-only tensors and would warn that writes are undefined behaviour.
    """
    result: dict[str, torch.Tensor] = {}
    for name, array in as_param_map(params).items():
        canonical = canonical_array(array)
        if not canonical.flags.writeable or not canonical.flags.aligned:
            canonical = canonical.copy()
        tensor = torch.from_numpy(canonical)
        result[name] = tensor if device is None else tensor.to(device)
    return result


def module_params(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """The module's ``state_dict`` (parameters and persistent buffers) as a ``ParamMap``."""
    return state_dict_to_params(module.state_dict())


def load_into_module(module: torch.nn.Module, params: ParamMap, strict: bool = True) -> None:
    """Copy ``params`` into ``module`` in place, checking names, shapes and dtypes first.

    With ``strict`` the names must match the module's ``state_dict`` exactly; without it,
    only the common names are loaded. Shapes and dtypes must always match: torch would cast
    dtypes silently, and a lossy cast is exactly the kind of drift version control exists
    to catch. Nothing is copied unless every check passes.
    """
    arrays = as_param_map(params)
    target = module.state_dict()
    kind = type(module).__name__
    missing = sorted(set(target) - set(arrays))
    unexpected = sorted(set(arrays) - set(target))
    problems: list[str] = []
    hints: list[str] = []
    if strict and (missing or unexpected):
        if missing:
            problems.append(f"missing {len(missing)} tensor(s) the module has: {_listing(missing)}")
        if unexpected:
            problems.append(
                f"{len(unexpected)} unexpected tensor(s) the module lacks: {_listing(unexpected)}"
            )
        hints.append(
            "Check that the params come from the same architecture, or pass strict=False "
            "to load only the common names."
        )
    mismatched = []
    common = sorted(set(arrays) & set(target))
    for name in common:
        theirs, ours = target[name], arrays[name]
        if tuple(theirs.shape) != ours.shape:
            mismatched.append(f"{name!r} params {list(ours.shape)} vs module {list(theirs.shape)}")
        elif _TORCH_DTYPES[dtype_name(ours.dtype)] != theirs.dtype:
            mismatched.append(f"{name!r} params {dtype_name(ours.dtype)} vs module {theirs.dtype}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape/dtype mismatch(es): {_listing(mismatched, str)}")
        hints.append(
            "Shapes must match the architecture and dtypes must match exactly: convert the "
            "params or the module (for example module.double()) explicitly; fedvc never "
            "casts silently."
        )
    if problems:
        raise TensorError(
            f"cannot load params into {kind}: {'; '.join(problems)}. {' '.join(hints)}"
        )
    tensors = params_to_state_dict({name: arrays[name] for name in common})
    try:
        module.load_state_dict(tensors, strict=strict)
    except RuntimeError as exc:  # a custom _load_from_state_dict hook refusing the data
        raise TensorError(f"cannot load params into {kind}: {exc}") from exc


def _listing(items: list[str], show: Callable[[str], str] = repr) -> str:
    shown = ", ".join(map(show, items[:_MAX_LISTED]))
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def input_batch(module: torch.nn.Module, inputs: np.ndarray) -> torch.Tensor:
    """``inputs`` as a tensor on ``module``'s device, refused if they are floating but not
    of the module's dtype (fedvc never casts silently). Integer inputs (token ids, class
    indices for an embedding) pass as they are."""
    array = np.ascontiguousarray(inputs)
    first = next(module.parameters(), None)
    if first is not None and array.dtype.kind == "f":
        name = dtype_name(array.dtype)
        if name not in _TORCH_DTYPES or _TORCH_DTYPES[name] != first.dtype:
            raise TensorError(
                f"inputs are {name} but the module's parameters are "
                f"{str(first.dtype).removeprefix('torch.')}: convert the inputs (for example "
                "with .astype(np.float32)); fedvc never casts silently"
            )
    batch = torch.from_numpy(array if array.flags.writeable else array.copy())
    return batch if first is None else batch.to(first.device)


def collect_activations(
    module: torch.nn.Module, inputs: np.ndarray, layers: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """Run ``inputs`` through ``module`` and return, per permutation name, the outputs of
    the submodule ``layers`` names for it, as ``(n_samples, width)`` float arrays.

    This is what ``fedvc.align.activation_matching`` consumes: run two models on the same
    inputs and match units whose activations agree. Outputs with more than two axes follow
    PyTorch's channels-first convention (``(N, C, *spatial)``, as Conv and BatchNorm
    produce), and every spatial position counts as a sample, so a channel's rows are all
    the values it took. The module runs in eval mode without gradients (so BatchNorm uses,
    and does not update, its running statistics); its training flags are restored after.
    """
    targets: dict[str, torch.nn.Module] = {}
    for perm, path in layers.items():
        try:
            targets[perm] = module.get_submodule(path)
        except AttributeError:
            names = [name for name, _ in module.named_modules() if name]
            raise TensorError(
                f"{type(module).__name__} has no submodule {path!r} (for {perm!r}); "
                f"it has {_listing(names)}"
            ) from None
    batch = input_batch(module, inputs)
    recorded: dict[str, list[torch.Tensor]] = {perm: [] for perm in targets}

    def recorder(perm: str) -> Callable[[torch.nn.Module, object, object], None]:
        def hook(_: torch.nn.Module, __: object, output: object) -> None:
            if not isinstance(output, torch.Tensor) or output.ndim < 2:
                raise TensorError(
                    f"submodule {layers[perm]!r} (for {perm!r}) must output one tensor of "
                    f"shape (N, C, ...), got {type(output).__name__}"
                )
            channels = output.detach().movedim(1, -1) if output.ndim > 2 else output.detach()
            recorded[perm].append(channels.reshape(-1, channels.shape[-1]).cpu())

        return hook

    handles = [target.register_forward_hook(recorder(perm)) for perm, target in targets.items()]
    try:
        with eval_mode(module), torch.no_grad():
            module(batch)
    finally:
        for handle in handles:
            handle.remove()
    silent = [f"{layers[perm]!r}" for perm, parts in recorded.items() if not parts]
    if silent:
        raise TensorError(
            f"submodule(s) {', '.join(silent)} never ran during the forward pass: "
            "name modules that the model's forward actually calls"
        )
    return {perm: torch.cat(parts).numpy() for perm, parts in recorded.items()}


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """``module`` in eval mode (no dropout, running BatchNorm statistics) for the block,
    then every submodule's own training flag back, mixed flags included."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training


def classification_loss(
    module: torch.nn.Module,
    params: ParamMap,
    inputs: np.ndarray,
    targets: np.ndarray,
    *,
    batch_size: int = 1024,
) -> float:
    """Mean cross-entropy of ``module`` with ``params`` loaded, on ``(inputs, targets)``.

    What ``fedvc barrier`` evaluates along a path between two models. Its own weights are
    replaced by ``params``; it runs in eval mode, and its training flags are restored.
    """
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise TensorError(
            f"need as many targets as inputs (and some), got {len(inputs)} inputs and "
            f"{len(targets)} targets"
        )
    x = input_batch(module, inputs)
    y = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=x.device)
    load_into_module(module, params, strict=True)
    total = 0.0
    with eval_mode(module), torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = module(x[start : start + batch_size])
            total += float(
                torch.nn.functional.cross_entropy(
                    logits, y[start : start + batch_size], reduction="sum"
                )
            )
    return total / len(x)
