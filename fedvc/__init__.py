"""fedvc: federated and decentralized training as version control in weight space.

Models are content-addressed snapshots; every training step, client update and merge is
a (signed) commit; history can be logged, diffed and verified like Git's.
"""

from fedvc.errors import FedvcError
from fedvc.objects import Commit, ObjectId, Snapshot, TensorEntry
from fedvc.repo import Repository
from fedvc.signing import SigningKey
from fedvc.tensor_files import load_params, save_params
from fedvc.tensors import ParamMap
from fedvc.trust import TrustStore

__version__ = "0.1.0"

__all__ = [
    "Commit",
    "FedvcError",
    "ObjectId",
    "ParamMap",
    "Repository",
    "SigningKey",
    "Snapshot",
    "TensorEntry",
    "TrustStore",
    "load_params",
    "save_params",
]
