"""``server.toml``: everything a coordinator needs, validated before anything starts.

A mistake in the file is reported with the key that holds it, what was expected, what
was found and what to do, and the server refuses to start: a fleet should never train
for hours under a setting nobody meant. Relative paths are read relative to the file.

```toml
[server]
address = "0.0.0.0:50051"
repository = "repo"               # created on first start
key = "keys/server.key"           # signs every merge commit
trusted_keys = "keys/clients"     # a directory of .pub files, or a list of key files
metrics_port = 9100               # Prometheus /metrics; 0 turns it off
[model]
initial = "fedvc_client.reference:digits_initial"  # or a .safetensors/.npz file, or a commit
[rounds]
count = 10
min_clients = 2
max_clients = 3
fraction = 1.0
deadline_seconds = 120
[strategy]
name = "fedavg"
params = {}
[updates]
max_norm = 100.0
[train]                           # passed to every client's task each round
epochs = 1
[tls]                             # optional; client_ca turns on mutual TLS
cert = "tls/server.pem"
key = "tls/server.key"
client_ca = "tls/ca.pem"
```
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedvc.errors import FedvcError
from fedvc.round import RoundConfig, RoundError
from fedvc.tensor_files import is_model_path

SECTIONS: dict[str, dict[str, tuple[type, ...]]] = {
    "server": {
        "address": (str,),
        "repository": (str,),
        "key": (str,),
        "trusted_keys": (str, list),
        "metrics_port": (int,),
    },
    "model": {"initial": (str,)},
    "rounds": {
        "count": (int,),
        "min_clients": (int,),
        "max_clients": (int,),
        "fraction": (int, float),
        "deadline_seconds": (int, float),
    },
    "strategy": {"name": (str,), "params": (dict,)},
    "updates": {"max_norm": (int, float)},
    "train": {},  # free-form: whatever the clients' task reads
    "tls": {"cert": (str,), "key": (str,), "client_ca": (str,)},
}
REQUIRED = {("server", "repository"), ("server", "key"), ("server", "trusted_keys")}


class ConfigError(FedvcError):
    """The server configuration cannot be used as written."""


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: clients must present a certificate it signed


@dataclass(frozen=True)
class ServerConfig:
    repository: Path
    key: Path
    trusted_keys: tuple[Path, ...]
    address: str = "0.0.0.0:50051"
    metrics_port: int = 9100
    initial: str | None = None
    rounds: int = 10
    round: RoundConfig = field(default_factory=RoundConfig)
    """Round sizing, deadline, the norm bound and the training settings sent to clients:
    ``[rounds]``, ``[updates]`` and ``[train]``, checked by ``RoundConfig`` itself."""
    strategy: str = "fedavg"
    strategy_params: Mapping[str, Any] = field(default_factory=dict)
    tls: TlsConfig | None = None


def load_config(path: str | Path) -> ServerConfig:
    """Read and validate ``path``; raise ``ConfigError`` naming the first problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the server config {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(raw, base=path.parent, source=str(path))


def parse_config(raw: Mapping[str, Any], *, base: Path, source: str = "config") -> ServerConfig:
    """Validate a parsed TOML table; relative paths are taken relative to ``base``."""
    _check_shape(raw, source)
    server, rounds, tls = raw.get("server", {}), raw.get("rounds", {}), raw.get("tls")
    strategy, updates = raw.get("strategy", {}), raw.get("updates", {})
    trusted = server["trusted_keys"]
    trusted = [trusted] if isinstance(trusted, str) else trusted
    if not trusted or not all(isinstance(t, str) for t in trusted):
        raise ConfigError(
            f"{source}: [server] trusted_keys must be a directory or a non-empty list of key "
            f"file paths, got {trusted!r}"
        )
    return ServerConfig(
        repository=_path(base, server["repository"]),
        key=_path(base, server["key"]),
        trusted_keys=tuple(_path(base, t) for t in trusted),
        address=_address(server.get("address", "0.0.0.0:50051"), source),
        metrics_port=_int_in(
            server.get("metrics_port", 9100), 0, 65535, "[server] metrics_port", source
        ),
        initial=_initial(raw.get("model", {}).get("initial"), base),
        rounds=_int_in(rounds.get("count", 10), 1, 10**9, "[rounds] count", source),
        round=_round_config(rounds, updates, raw.get("train", {}), source),
        strategy=strategy.get("name", "fedavg"),
        strategy_params=dict(strategy.get("params", {})),
        tls=_tls(tls, base, source) if tls is not None else None,
    )


def _check_shape(raw: Mapping[str, Any], source: str) -> None:
    for section, value in raw.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown section [{section}]; expected one of "
                f"{', '.join(f'[{s}]' for s in SECTIONS)}"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: [{section}] must be a table, got {value!r}")
        keys = SECTIONS[section]
        for key, item in value.items():
            if not keys and section == "train":
                continue
            if key not in keys:
                raise ConfigError(
                    f"{source}: unknown key {key!r} in [{section}]; expected one of "
                    f"{', '.join(keys)}"
                )
            if not isinstance(item, keys[key]) or isinstance(item, bool):
                wanted = " or ".join(t.__name__ for t in keys[key])
                raise ConfigError(
                    f"{source}: [{section}] {key} must be {wanted}, got {item!r} "
                    f"({type(item).__name__})"
                )
    for section, key in sorted(REQUIRED):
        if key not in raw.get(section, {}):
            raise ConfigError(f"{source}: [{section}] {key} is required; add it to the file")
    if "tls" in raw and not {"cert", "key"} <= set(raw["tls"]):
        raise ConfigError(f"{source}: [tls] needs both cert and key (client_ca is optional)")


def _path(base: Path, value: str) -> Path:
    return (base / Path(value).expanduser()).resolve()


def _initial(value: str | None, base: Path) -> str | None:
    """A model file is resolved like every other path; ``package.module:name`` stays as is."""
    if value is None or not is_model_path(value):
        return value
    return str(_path(base, value))


def _address(value: str, source: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"{source}: [server] address must be HOST:PORT (e.g. 0.0.0.0:50051), got {value!r}"
        )
    return value


def _int_in(value: int, low: int, high: int, key: str, source: str) -> int:
    if not low <= value <= high:
        raise ConfigError(f"{source}: {key} must be between {low} and {high}, got {value}")
    return value


def _round_config(
    rounds: Mapping[str, Any],
    updates: Mapping[str, Any],
    train: Mapping[str, Any],
    source: str,
) -> RoundConfig:
    """``[rounds]`` (all but count), ``[updates]`` and ``[train]`` as the coordinator's
    ``RoundConfig``, whose own checks apply; its defaults are the file's."""
    settings = {k: v for k, v in rounds.items() if k != "count"}
    try:
        return RoundConfig(**settings, **updates, train=dict(train))
    except RoundError as exc:
        raise ConfigError(f"{source}: [rounds] or [updates]: {exc}") from None


def _tls(raw: Mapping[str, str], base: Path, source: str) -> TlsConfig:
    tls = TlsConfig(
        cert=_path(base, raw["cert"]),
        key=_path(base, raw["key"]),
        client_ca=_path(base, raw["client_ca"]) if "client_ca" in raw else None,
    )
    for what, path in (("cert", tls.cert), ("key", tls.key), ("client_ca", tls.client_ca)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{source}: [tls] {what} {path} does not exist")
    return tls
