"""From server.toml to a Coordinator: first start commits the model, later starts resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fedvc_server.bootstrap import build_coordinator
from fedvc_server.config import ConfigError, ServerConfig

from fedvc.errors import FedvcError
from fedvc.repo import Repository
from fedvc.round import RoundConfig
from fedvc.signing import KeyFileError, SigningKey
from fedvc.tensor_files import save_params

MODEL = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}


def initial_model() -> dict[str, np.ndarray]:
    return MODEL


def setup(tmp_path: Path, **changes: object) -> ServerConfig:
    SigningKey.generate().save(tmp_path / "server.key")
    (tmp_path / "clients").mkdir()
    for i in range(2):
        key = SigningKey.generate()
        (tmp_path / "clients" / f"c{i}.pub").write_bytes(key.public_key.to_pem())
    save_params(MODEL, tmp_path / "model.npz")
    fields: dict[str, object] = {
        "repository": tmp_path / "repo",
        "key": tmp_path / "server.key",
        "trusted_keys": (tmp_path / "clients",),
        "initial": str(tmp_path / "model.npz"),
        "rounds": 3,
        "round": RoundConfig(min_clients=2),
    }
    fields.update(changes)
    return ServerConfig(**fields)  # type: ignore[arg-type]


def test_first_start_commits_the_signed_initial_model_and_restarts_resume(tmp_path: Path) -> None:
    config = setup(tmp_path)
    coordinator = build_coordinator(config)
    state = coordinator.state
    assert state is not None and state.number == 1 and state.target == 2
    assert coordinator.fleet_size == 2
    repo = coordinator.repo
    ((commit_id, commit),) = repo.log("main")
    assert commit.author == SigningKey.load(config.key).public_key.hex()
    np.testing.assert_array_equal(repo.read_params("main")["w"], MODEL["w"])
    repo.close()
    again = build_coordinator(config)
    assert again.repo.log("main")[0][0] == commit_id  # nothing committed twice


def test_the_initial_model_can_come_from_code(tmp_path: Path) -> None:
    config = setup(tmp_path, initial=f"{__name__}:initial_model")
    coordinator = build_coordinator(config)
    np.testing.assert_array_equal(coordinator.repo.read_params("main")["w"], MODEL["w"])


def test_the_initial_model_can_be_a_commit_the_repository_holds(tmp_path: Path) -> None:
    config = setup(tmp_path, initial="pretrained")
    repo = Repository.init(config.repository, bare=True, branch="import")
    oid = repo.commit_params(MODEL, "a pretrained model", branch="import")
    repo.create_tag("pretrained", oid)
    repo.close()
    coordinator = build_coordinator(config)
    assert coordinator.repo.resolve("main") == oid and len(coordinator.repo.log("main")) == 1


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"initial": None}, "set [model] initial"),
        ({"initial": "missing.safetensors"}, "does not exist"),
        ({"initial": "no_such_module:f"}, "cannot import module"),
        ({"initial": "v9"}, "nor a revision in the repository"),
        ({"strategy": "clip_by_norm", "strategy_params": {"max_norm": 1.0}}, "does not merge"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(
    tmp_path: Path, changes: dict[str, object], words: str
) -> None:
    with pytest.raises(FedvcError) as caught:  # a clear error, never a traceback
        build_coordinator(setup(tmp_path, **changes))
    assert words in str(caught.value)


def test_a_non_repository_directory_is_not_taken_over(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        build_coordinator(setup(tmp_path))


def test_no_trusted_keys_is_refused(tmp_path: Path) -> None:
    config = setup(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KeyFileError, match="holds no key files"):
        build_coordinator(ServerConfig(**{**config.__dict__, "trusted_keys": (empty,)}))


def test_the_server_serves_only_calls_signed_by_its_trusted_keys(tmp_path: Path) -> None:
    """FleetServer wires the coordinator's trust store into the servicer and counts the
    refused calls in its metrics."""
    import grpc
    from fedvc_client.link import GrpcLink, LinkError
    from fedvc_server.app import FleetServer

    from fedvc.round import UpdateRejected
    from fedvc.transport import RoundOffer

    client = SigningKey.generate()
    config = setup(tmp_path, address="127.0.0.1:0", metrics_port=0)
    (tmp_path / "clients" / "mine.pub").write_bytes(client.public_key.to_pem())
    server = FleetServer(config).start()
    try:
        address = f"127.0.0.1:{server.port}"
        with GrpcLink(address) as unsigned, pytest.raises(LinkError) as caught:
            unsigned.next_round(str(client.key_id))
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
        stranger = SigningKey.generate()
        with GrpcLink(address, signer=stranger) as link, pytest.raises(UpdateRejected):
            link.next_round(str(stranger.key_id))
        with GrpcLink(address, signer=client) as link:
            assert isinstance(link.next_round(str(client.key_id)), RoundOffer)
        counted = server.metrics.registry.get_sample_value
        labels = {"method": "NextRound"}
        assert counted("fedvc_call_errors_total", {**labels, "code": "UNAUTHENTICATED"}) == 1
        assert counted("fedvc_call_errors_total", {**labels, "code": "PERMISSION_DENIED"}) == 1
    finally:
        server.stop()
        server.coordinator.repo.close()
