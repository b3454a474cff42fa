"""docker/ hangs together: images, the compose stack, Prometheus and Grafana.

Nothing is built or started. The files are parsed and checked against each other and against
the repository, so a renamed package, path, port or metric fails here instead of in a
deployment.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from fedvc_client.reference import digits_initial
from fedvc_server.config import parse_config
from fedvc_server.metrics import FleetMetrics

from fedvc.tensor_files import load_params

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
CLIENTS = ["client-0", "client-1", "client-2"]
SERVER_CONFIG: dict[str, Any] = tomllib.loads((DOCKER / "server.toml").read_text())

# what the coordinator exports, by Prometheus type, read from its own registry so that a
# metric added or renamed in fedvc_server.metrics must be added to the dashboard too
EXPORTED = [(m.type, m.name) for m in FleetMetrics().registry.collect()]
COUNTERS = {f"{name}_total" for kind, name in EXPORTED if kind == "counter"}
GAUGES = {name for kind, name in EXPORTED if kind == "gauge"}
HISTOGRAMS = {name for kind, name in EXPORTED if kind == "histogram"}
METRICS = COUNTERS | GAUGES | HISTOGRAMS

# distribution directory each image installs next to the root one, and the one it must not
IMAGES = {
    "server.Dockerfile": ("server", "client"),
    "client.Dockerfile": ("client", "server"),
}


# ---------------------------------------------------------------------------- helpers


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) for each instruction, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, arguments = current.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    assert not current, f"{path.name} ends inside a continued line"
    return instructions


def pip_installs(arguments: str) -> list[list[str]]:
    """The arguments after each `pip install` in a RUN instruction's shell command."""
    installs = []
    for command in re.split(r"&&|;|\|\|", arguments):
        words = shlex.split(command)
        for start in range(len(words) - 1):
            if words[start].endswith("pip") and words[start + 1] == "install":
                installs.append(words[start + 2 :])
                break
    return installs


def requirements(install: list[str]) -> list[str]:
    """The requirement arguments of one `pip install`, local paths normalized (`./` -> `.`)."""
    takes_value = {"-i", "--index-url", "--extra-index-url", "-c", "--constraint", "-r"}
    found, skip = [], False
    for word in install:
        if skip:
            skip = False
        elif word in takes_value:
            skip = True
        elif not word.startswith("-"):
            found.append((word.rstrip("/") or ".") if word.startswith(".") else word)
    return found


def copy_sources(path: Path) -> list[str]:
    """The build-context sources of every COPY (copies from other stages left out)."""
    sources = []
    for keyword, arguments in dockerfile_instructions(path):
        assert keyword != "ADD", f"{path.name}: use COPY, not ADD"
        if keyword != "COPY":
            continue
        words = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
        flags = [word for word in words if word.startswith("--")]
        if any(flag.startswith("--from") for flag in flags):
            continue
        sources.extend(word for word in words[:-1] if not word.startswith("--"))
    return sources


def mounts(service: str) -> dict[str, tuple[str, bool]]:
    """container path -> (source, read-only) for a service's short-syntax volumes."""
    found = {}
    for entry in SERVICES[service].get("volumes", []):
        source, target, *mode = entry.split(":")
        found[target] = (source, mode == ["ro"])
    return found


def mount_of(service: str, container_path: str) -> tuple[str, str, bool]:
    """(mount point, source, read-only) of the mount that holds container_path."""
    path = PurePosixPath(container_path)
    holding = [
        (target, source, read_only)
        for target, (source, read_only) in mounts(service).items()
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents
    ]
    assert holding, f"{service}: nothing is mounted at {container_path}"
    return max(holding, key=lambda mount: len(mount[0]))


def host_path(source: str) -> Path:
    """A bind mount's source on the host; compose resolves it against the compose file."""
    return (COMPOSE_FILE.parent / source).resolve()


def option(command: list[str], name: str) -> list[str]:
    """Every value given to `name` in an argv list, as `name value` or `name=value`."""
    values = []
    for index, word in enumerate(command):
        if word == name:
            values.append(command[index + 1])
        elif word.startswith(name + "="):
            values.append(word.split("=", 1)[1])
    return values


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def dockerignored(relative: str) -> bool:
    """Whether .dockerignore leaves relative (or a folder above it) out of the build context."""
    parts = PurePosixPath(relative).parts
    candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    ignored = False
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch(part, pattern[3:]) for part in parts)
        else:
            hit = any(fnmatch(candidate, pattern) for candidate in candidates)
        if hit:
            ignored = not negate
    return ignored


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "fedvc.json").read_text())
    panels = list(dashboard["panels"])
    for panel in list(panels):
        panels.extend(panel.get("panels", []))  # panels folded into rows
    return [
        (panel["title"], target["expr"])
        for panel in panels
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def metric_of(series: str) -> str | None:
    """The exported metric a series name in a query belongs to, or None if none does."""
    if series in COUNTERS or series in GAUGES:
        return series
    for histogram in HISTOGRAMS:
        if series in {f"{histogram}_bucket", f"{histogram}_sum", f"{histogram}_count"}:
            return histogram
    return None


def grpc_port() -> int:
    return int(SERVER_CONFIG["server"]["address"].rsplit(":", 1)[1])


# ---------------------------------------------------------------------------- compose


def test_compose_has_the_whole_stack() -> None:
    assert set(SERVICES) == {"keys", "server", *CLIENTS, "prometheus", "grafana"}


@pytest.mark.parametrize("service", sorted(name for name in SERVICES if "build" in SERVICES[name]))
def test_build_context_and_dockerfile_exist(service: str) -> None:
    build = SERVICES[service]["build"]
    context = host_path(build["context"])
    assert context == ROOT, f"{service} must build from the repository root"
    assert (context / build["dockerfile"]).is_file()


def test_services_built_from_one_dockerfile_share_one_image_name() -> None:
    images: dict[str, set[str]] = {}
    for service in SERVICES.values():
        if "build" in service:
            images.setdefault(service["build"]["dockerfile"], set()).add(service["image"])
    assert images == {
        "docker/server.Dockerfile": {"fedvc-server:0.1.0"},
        "docker/client.Dockerfile": {"fedvc-client:0.1.0"},
    }
    assert SERVICES["keys"]["build"]["dockerfile"] == "docker/client.Dockerfile"  # reference model
    assert all(SERVICES[c]["build"]["dockerfile"] == "docker/client.Dockerfile" for c in CLIENTS)


def test_server_is_wired_to_its_config_keys_and_repository() -> None:
    server = SERVICES["server"]
    config_path = option(server["command"], "--config")
    assert config_path, "the server is started with --config"
    source, read_only = mounts("server")[config_path[0]]
    assert host_path(source) == DOCKER / "server.toml" and read_only

    settings = SERVER_CONFIG["server"]
    for path in (settings["key"], settings["trusted_keys"]):
        _, source, read_only = mount_of("server", path)
        assert source == "keys" and read_only
    _, source, read_only = mount_of("server", settings["repository"])
    assert source in COMPOSE["volumes"] and not read_only, "the repository needs a writable volume"
    assert server["depends_on"]["keys"]["condition"] == "service_completed_successfully"

    published = {str(port).rsplit(":", 1)[1] for port in server["ports"]}
    assert published == {str(grpc_port()), str(settings["metrics_port"])}


@pytest.mark.parametrize("index", range(len(CLIENTS)))
def test_client_joins_the_server_with_its_own_key_and_share(index: int) -> None:
    service = SERVICES[f"client-{index}"]
    command = service["command"]
    assert option(command, "--server") == [f"server:{grpc_port()}"]
    assert option(command, "--task") == ["fedvc_client.reference:digits_task"]
    assert option(command, "--task-arg") == [f"client={index}", f"clients={len(CLIENTS)}"]
    key = option(command, "--key")
    assert key == [f"/keys/client-{index}.key"]
    _, source, read_only = mount_of(f"client-{index}", key[0])
    assert source == "keys" and read_only
    assert service["depends_on"]["server"]["condition"] == "service_healthy"
    assert service["depends_on"]["keys"]["condition"] == "service_completed_successfully"


def test_keys_service_makes_every_key_once(tmp_path: Path) -> None:
    """Run the keys service's script with a stand-in `fedvc` that writes placeholder keys."""
    keys = SERVICES["keys"]
    assert keys["entrypoint"][0] == "/bin/sh"
    (script,) = keys["command"]
    mount_point = next(target for target, (source, _) in mounts("keys").items() if source == "keys")
    volume = tmp_path / "keys"
    volume.mkdir()

    def on_host(container_path: str) -> Path:
        relative = PurePosixPath(container_path).relative_to(mount_point)
        return volume / relative

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "fedvc"
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$#" -eq 3 ] && [ "$1" = keygen ] && [ "$2" = --out ] \\\n'
        '    || { echo "unexpected arguments: $*" >&2; exit 2; }\n'
        '[ -e "$3" ] && { echo "$3 exists" >&2; exit 1; }\n'
        'echo "private $3" > "$3" && echo "public $3" > "$3.pub" && echo "$3" >> "$KEYGEN_LOG"\n'
    )
    fake.chmod(0o755)
    log = tmp_path / "keygen.log"
    environment = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "KEYGEN_LOG": str(log),
    }
    # compose writes a literal $ as $$
    shell = script.replace("$$", "$").replace(mount_point + "/", f"{volume}/")
    run = [*keys["entrypoint"], shell]

    subprocess.run(run, env=environment, check=True, capture_output=True, text=True)
    server_key = on_host(SERVER_CONFIG["server"]["key"])
    client_keys = [on_host(option(SERVICES[c]["command"], "--key")[0]) for c in CLIENTS]
    assert sorted(log.read_text().split()) == sorted(map(str, [server_key, *client_keys]))
    trusted = on_host(SERVER_CONFIG["server"]["trusted_keys"])
    trusted_keys = sorted(path.read_text() for path in trusted.iterdir())
    assert all(path.suffix == ".pub" for path in trusted.iterdir())
    assert trusted_keys == sorted(Path(f"{key}.pub").read_text() for key in client_keys)

    initial = on_host(SERVER_CONFIG["model"]["initial"])
    assert load_params(initial).keys() == digits_initial().keys()

    before = {path: path.read_bytes() for path in volume.rglob("*") if path.is_file()}
    subprocess.run(run, env=environment, check=True, capture_output=True, text=True)
    assert len(log.read_text().split()) == 1 + len(CLIENTS), "existing keys are kept"
    assert {path: path.read_bytes() for path in volume.rglob("*") if path.is_file()} == before


def test_compose_file_validates_with_docker_compose() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("the docker executable is not installed")
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------- images


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_dockerfile_installs_pinned_torch_first_then_its_distributions(dockerfile: str) -> None:
    own, other = IMAGES[dockerfile]
    instructions = dockerfile_instructions(DOCKER / dockerfile)
    installs = [
        (position, requirements(install))
        for position, (keyword, arguments) in enumerate(instructions)
        if keyword == "RUN"
        for install in pip_installs(arguments)
    ]
    first_copy = next(i for i, (keyword, _) in enumerate(instructions) if keyword == "COPY")
    position, first = installs[0]
    assert first == ["torch==2.13.0"] and position < first_copy, "torch alone, before the sources"

    installed = [requirement for _, found in installs for requirement in found]
    assert {".", f"./{own}"} <= set(installed)
    assert f"./{other}" not in installed
    torch = [requirement for requirement in installed if re.match(r"torch\b", requirement)]
    assert set(torch) == {"torch==2.13.0"}, "every torch requirement is the pinned version"


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_dockerfile_runs_unprivileged_without_pip_cache(dockerfile: str) -> None:
    instructions = dockerfile_instructions(DOCKER / dockerfile)
    (base,) = [arguments for keyword, arguments in instructions if keyword == "FROM"]
    version = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", base)
    assert version and int(version[1]) >= 10, "a python:3.x-slim base the project supports"
    environment = " ".join(arguments for keyword, arguments in instructions if keyword == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in environment
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"} and not users[-1].startswith(("root:", "0:"))


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_dockerfile_copies_what_pip_needs_from_the_repository(dockerfile: str) -> None:
    own, _ = IMAGES[dockerfile]
    sources = copy_sources(DOCKER / dockerfile)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not dockerignored(source), f"COPY {source}: left out by .dockerignore"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {"pyproject.toml", project["readme"], "fedvc", own} <= set(sources)


def test_server_image_serves_the_configured_ports_and_config() -> None:
    instructions = dict(dockerfile_instructions(DOCKER / "server.Dockerfile"))
    assert json.loads(instructions["ENTRYPOINT"]) == ["fedvc-server"]
    config = option(json.loads(instructions["CMD"]), "--config")
    assert config == option(SERVICES["server"]["command"], "--config")
    exposed = set(instructions["EXPOSE"].split())
    assert exposed == {str(grpc_port()), str(SERVER_CONFIG["server"]["metrics_port"])}
    assert "HEALTHCHECK" in instructions
    assert str(grpc_port()) in instructions["HEALTHCHECK"]


def test_client_image_runs_the_client() -> None:
    instructions = dict(dockerfile_instructions(DOCKER / "client.Dockerfile"))
    assert json.loads(instructions["ENTRYPOINT"]) == ["fedvc-client"]


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    for path in [".venv", ".git", "fedvc.egg-info", "server/fedvc_server.egg-info", "build"]:
        assert dockerignored(path), path
    for path in ["dist", ".mypy_cache", ".pytest_cache", "fedvc/__pycache__/repo.cpython-311.pyc"]:
        assert dockerignored(path), path
    assert not dockerignored("fedvc/repo.py") and not dockerignored("docker/server.toml")


# ---------------------------------------------------------------------------- server config


def test_server_config_is_accepted_by_the_server() -> None:
    config = parse_config(SERVER_CONFIG, base=DOCKER, source="docker/server.toml")
    assert (
        str(config.repository).startswith("/data") and config.initial == "/keys/initial.safetensors"
    )


def test_server_config_has_the_documented_shape() -> None:
    assert set(SERVER_CONFIG) == {"server", "model", "rounds", "strategy", "updates", "train"}
    server = SERVER_CONFIG["server"]
    assert set(server) == {"address", "repository", "key", "trusted_keys", "metrics_port"}
    assert server["address"] == "0.0.0.0:50051" and server["metrics_port"] == 9100
    initial = SERVER_CONFIG["model"]["initial"]
    _, source, _ = mount_of("server", initial)
    assert source == "keys", "the initial model is written by the keys service"
    rounds = SERVER_CONFIG["rounds"]
    assert set(rounds) == {"count", "min_clients", "max_clients", "fraction", "deadline_seconds"}
    assert rounds["min_clients"] <= rounds["max_clients"] <= len(CLIENTS)
    assert 0 < rounds["fraction"] <= 1
    assert SERVER_CONFIG["strategy"] == {"name": "fedavg", "params": {}}
    assert set(SERVER_CONFIG["updates"]) == {"max_norm"}
    assert set(SERVER_CONFIG["train"]) == {"epochs", "lr"}


# ---------------------------------------------------------------------------- monitoring


def test_prometheus_scrapes_the_server_metrics_port() -> None:
    source, _ = mounts("prometheus")["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(host_path(source).read_text())
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    assert targets == [f"server:{SERVER_CONFIG['server']['metrics_port']}"]
    assert all(
        job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"]
    )


def test_dashboard_shows_every_exported_metric_and_no_other() -> None:
    queries = panel_queries()
    shown: set[str] = set()
    for title, expr in queries:
        for series in re.findall(r"\bfedvc_[A-Za-z0-9_:]*", expr):
            metric = metric_of(series)
            assert metric is not None, f"panel {title!r} queries {series}, which is not exported"
            shown.add(metric)
    assert shown == METRICS
    rejected = [expr for _, expr in queries if "fedvc_updates_rejected_total" in expr]
    assert any(re.search(r"by \(reason\)", expr) for expr in rejected), "rejections by reason"
    quantiles = {
        (histogram, quantile)
        for _, expr in queries
        for quantile, histogram in re.findall(
            r"histogram_quantile\((0\.\d+),.*?(fedvc_\w+)_bucket", expr
        )
    }
    assert {(h, q) for h in HISTOGRAMS for q in ("0.5", "0.95")} <= quantiles


def test_grafana_provisioning_points_at_files_that_exist() -> None:
    grafana = mounts("grafana")
    source, _ = grafana["/etc/grafana/provisioning"]
    provisioning = host_path(source)

    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (datasource,) = datasources["datasources"]
    prometheus_ports = {str(port).rsplit(":", 1)[1] for port in SERVICES["prometheus"]["ports"]}
    assert datasource["type"] == "prometheus"
    assert datasource["url"] in {f"http://prometheus:{port}" for port in prometheus_ports}

    providers = yaml.safe_load((provisioning / "dashboards" / "fedvc.yml").read_text())
    for provider in providers["providers"]:
        _, source, _ = mount_of("grafana", provider["options"]["path"])
        assert (host_path(source) / "fedvc.json").is_file()

    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    target, source, _ = mount_of("grafana", home)
    assert (host_path(source) / PurePosixPath(home).relative_to(target)).is_file()

    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "fedvc.json").read_text())
    uids = {
        panel["datasource"]["uid"]
        for panel in dashboard["panels"]
        if isinstance(panel.get("datasource"), dict)
    }
    assert uids == {datasource["uid"]}
