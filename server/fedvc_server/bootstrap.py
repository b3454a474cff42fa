"""From a validated ``ServerConfig`` to a ready ``Coordinator``.

The repository is created on first start and the initial model committed (signed) to
``main``; on every later start ``main`` already holds the history and the initial model
setting is ignored, so a restarted server simply continues from the last merged round.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fedvc.coordinator import Coordinator, CoordinatorConfig, RoundObserver
from fedvc.errors import FedvcError
from fedvc.merge.base import MergeStrategy
from fedvc.merge.registry import make
from fedvc.repo import Repository, RepositoryNotFoundError, branch_ref
from fedvc.signing import SigningKey
from fedvc.tensor_files import is_model_path, load_params
from fedvc.tensors import as_param_map
from fedvc.trust import TrustStore
from fedvc.user_code import import_object
from fedvc_server.config import ConfigError, ServerConfig


def open_repository(config: ServerConfig) -> Repository:
    """The server's repository (a bare store directory), created if it does not exist."""
    try:
        return Repository.open_or_init(config.repository)
    except RepositoryNotFoundError as exc:
        raise ConfigError(f"[server] repository: {exc}") from None


def start_main(repo: Repository, spec: str, signer: SigningKey) -> None:
    """Give an empty repository its ``main``: a commit it already holds (a revision, say a
    tag of a pretrained model), or the model ``spec`` names, committed and signed."""
    if ":" not in spec and not is_model_path(spec):
        try:
            repo.create_branch("main", spec)
        except FedvcError as exc:
            raise ConfigError(
                f"[model] initial {spec!r} is neither a model file, a package.module:function "
                f"nor a revision in the repository ({exc})"
            ) from None
        return
    params = as_param_map(initial_model(spec))
    repo.commit_params(params, "initial model", branch="main", signer=signer)


def initial_model(spec: str) -> dict[str, object]:
    """An initial model named by ``[model] initial``: a model file, or a
    ``package.module:function`` returning a name → array mapping (or a torch state_dict)."""
    path = Path(spec)
    if is_model_path(path):
        if not path.is_file():
            raise ConfigError(f"[model] initial: the model file {path} does not exist")
        return dict(load_params(path))
    made = import_object(spec, "[model] initial")()
    if not isinstance(made, Mapping):
        raise ConfigError(
            f"[model] initial {spec!r} returned {type(made).__name__}; it must return a "
            "mapping of tensor names to arrays"
        )
    return dict(made)


def build_coordinator(
    config: ServerConfig, *, observer: RoundObserver | None = None
) -> Coordinator:
    """Open (or create) the repository, commit the initial model if ``main`` is empty, and
    build the coordinator the config describes."""
    signer = SigningKey.load(config.key)
    trust = TrustStore.from_paths(config.trusted_keys)
    strategy = make(config.strategy, dict(config.strategy_params))
    if not isinstance(strategy, MergeStrategy):
        raise ConfigError(
            f"[strategy] {config.strategy!r} transforms updates but does not merge them; "
            "name a merge strategy (fedavg, fisher, median, ...)"
        )
    repo = open_repository(config)
    if repo.refs.get_ref(branch_ref("main")) is None:
        if config.initial is None:
            raise ConfigError(
                "the repository has no model yet: set [model] initial to a model file, a "
                "package.module:function that builds one, or a commit in the repository"
            )
        start_main(repo, config.initial, signer)
    return Coordinator(
        repo,
        strategy,
        trust=trust,
        signer=signer,
        config=CoordinatorConfig(rounds=config.rounds, round=config.round),
        observer=observer,
    )
