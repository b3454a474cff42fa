"""server.toml: a good file parses with its paths resolved; every mistake is named."""

from __future__ import annotations

from pathlib import Path

import pytest
from fedvc_server.config import ConfigError, load_config

GOOD = """
[server]
address = "127.0.0.1:6000"
repository = "repo"
key = "keys/server.key"
trusted_keys = "keys/clients"
metrics_port = 0
[model]
initial = "model.safetensors"
[rounds]
count = 3
min_clients = 2
max_clients = 4
fraction = 0.5
deadline_seconds = 30
[strategy]
name = "trimmed_mean"
params = { beta = 0.2 }
[updates]
max_norm = 10
[train]
epochs = 2
lr = 0.1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(text)
    return path


def test_a_good_file_parses_with_paths_relative_to_it(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.repository == tmp_path / "repo"
    assert config.trusted_keys == (tmp_path / "keys" / "clients",)
    assert (config.address, config.metrics_port, config.rounds) == ("127.0.0.1:6000", 0, 3)
    assert (config.round.min_clients, config.round.max_clients, config.round.fraction) == (
        2,
        4,
        0.5,
    )
    assert config.strategy == "trimmed_mean" and config.strategy_params == {"beta": 0.2}
    assert config.round.max_norm == 10.0 and config.round.train == {"epochs": 2, "lr": 0.1}
    assert config.initial == str(tmp_path / "model.safetensors") and config.tls is None


def test_defaults_for_what_is_left_out(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path, '[server]\nrepository = "r"\nkey = "k"\ntrusted_keys = ["a.pub", "b.pub"]\n'
        )
    )
    assert config.trusted_keys == (tmp_path / "a.pub", tmp_path / "b.pub")
    assert config.strategy == "fedavg" and config.round.max_norm is None and config.rounds == 10


@pytest.mark.parametrize(
    "edit, words",
    [
        (("[updates]", "[update]"), "unknown section [update]"),
        (("count = 3", 'count = "3"'), "[rounds] count must be int, got '3'"),
        (("count = 3", "count = 0"), "[rounds] count must be between 1"),
        (("fraction = 0.5", "fraction = -1.0"), "fraction must be in (0, 1], got -1.0"),
        (("fraction = 0.5", "fraction = 1.5"), "fraction must be in (0, 1], got 1.5"),
        (("min_clients = 2", "min_clients = 9"), "1 ≤ min ≤ max, got min=9, max=4"),
        (("max_norm = 10", "max_norm = -1"), "max_norm must be a positive number"),
        (("metrics_port = 0", "metrics_port = 70000"), "metrics_port must be between 0"),
        (('address = "127.0.0.1:6000"', 'address = "nowhere"'), "HOST:PORT"),
        (('key = "keys/server.key"', ""), "[server] key is required"),
        (("lr = 0.1", 'lr = 0.1\n[tls]\ncert = "c.pem"'), "[tls] needs both cert and key"),
        (("max_norm = 10", "max_nrom = 10"), "unknown key 'max_nrom' in [updates]"),
        (("count = 3", "count = true"), "[rounds] count must be int, got True"),
    ],
)
def test_each_mistake_is_named(tmp_path: Path, edit: tuple[str, str], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, GOOD.replace(*edit)))
    assert words in str(caught.value)


def test_unreadable_or_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[server\n"))


def test_tls_files_must_exist(tmp_path: Path) -> None:
    text = GOOD + '[tls]\ncert = "c.pem"\nkey = "k.pem"\n'
    with pytest.raises(ConfigError, match=r"\[tls\] cert .*c.pem does not exist"):
        load_config(write(tmp_path, text))
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    tls = load_config(write(tmp_path, text)).tls
    assert tls is not None and tls.client_ca is None
