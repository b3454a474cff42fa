"""Permutation alignment: bringing models into one basis before they are merged.

Hidden units can be reordered without changing what a network computes, so two models
trained apart are compared, and averaged, only after their units are matched. This
package describes a model's permutation symmetry (``PermutationSpec``, or ``infer_spec``
for plain MLPs and CNNs), finds aligning permutations from weights (``weight_matching``),
from activations (``activation_matching``) or for many models at once (``merge_many``),
and applies them to a model or to anything shaped like it (``apply_permutation``).

This is the only part of fedvc that imports scipy.

References:
    Ainsworth, Hayase, Srinivasa. "Git Re-Basin: Merging Models modulo Permutation
    Symmetries", ICLR 2023.
    Wang, Yurochkin, Sun, Papailiopoulos, Khazaeni. "Federated Learning with Matched
    Averaging", ICLR 2020.
"""

from fedvc.align.infer import infer_spec
from fedvc.align.matching import (
    MergeManyResult,
    activation_matching,
    l2_distance,
    merge_many,
    weight_matching,
)
from fedvc.align.spec import (
    AlignError,
    PermutationSpec,
    apply_permutation,
    conv_axes,
    dense_axes,
    identity_perms,
    invert_perms,
    norm_axes,
    random_perms,
)

__all__ = [
    "AlignError",
    "MergeManyResult",
    "PermutationSpec",
    "activation_matching",
    "apply_permutation",
    "conv_axes",
    "dense_axes",
    "identity_perms",
    "infer_spec",
    "invert_perms",
    "l2_distance",
    "merge_many",
    "norm_axes",
    "random_perms",
    "weight_matching",
]
