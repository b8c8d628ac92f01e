"""``deploy/`` checked where it cannot run (no Docker, no cluster here).

The Kubernetes manifests validate against the Kubernetes schemas; the compose file parses, runs
every role and reaches its Kafka; every ``recstream`` command the image, compose file and
manifests run parses with the real CLI; every ``RECSTREAM_*`` name they use is one the code
reads; Prometheus scrapes the metrics ports the roles listen on.
"""

from __future__ import annotations

import ast
import copy
import importlib
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer.main
import yaml

from serving.cli import app

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PRODUCT_PACKAGES = ("streams", "encoders", "stores", "serving")


# -- reading the files -----------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, rest) for each instruction of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def dockerfile_json(instruction: str) -> list[str]:
    [rest] = [rest for ins, rest in dockerfile() if ins == instruction]
    value = json.loads(rest)
    assert isinstance(value, list)
    return value


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every document of every manifest under deploy/k8s."""
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.y*ml")):
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def workloads() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{name}:{d['metadata']['name']}", d) for name, d in manifests() if "template" in d["spec"]
    ]


def is_recstream_image(image: str) -> bool:
    return image.split(":")[0].rsplit("/", 1)[-1] == "recstream"


# -- what the CLI accepts -----------------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    """A ``recstream`` command line from deploy/, parsed by the real CLI."""

    where: str
    command: tuple[str, ...]  # e.g. ("worker", "interests")
    params: dict[str, Any]

    @property
    def listens_on(self) -> dict[int, str]:
        """Port -> address for each port the role listens on (the API serves /metrics too)."""
        if self.command == ("serve",):
            return {self.params["port"]: self.params["host"]}
        if self.command == ("worker", "interests") and self.params["metrics_port"]:
            return {self.params["metrics_port"]: self.params["metrics_host"]}
        return {}

    @property
    def metrics_port(self) -> int | None:
        return next(iter(self.listens_on), None)


def parse_recstream(where: str, args: list[str]) -> Invocation:
    """Resolve ``args`` through the CLI's command groups and parse the rest as click would."""
    command = typer.main.get_command(app)
    path: list[str] = []
    rest = list(args)
    while (subcommands := getattr(command, "commands", None)) is not None:
        assert rest, f"{where}: {shlex.join(args)} names no command"
        name, rest = rest[0], rest[1:]
        assert name in subcommands, f"{where}: recstream has no command {' '.join([*path, name])}"
        command, path = subcommands[name], [*path, name]
    ctx = command.make_context(f"recstream {' '.join(path)}", rest)  # raises on unknown options
    return Invocation(where, tuple(path), dict(ctx.params))


def compose_recstream_services() -> dict[str, dict[str, Any]]:
    """The compose services built from the Dockerfile (its entry point is ``recstream``)."""
    return {
        name: svc
        for name, svc in compose()["services"].items()
        if "build" in svc
        and Path(svc["build"].get("dockerfile", "Dockerfile")).name == "Dockerfile"
    }


def invocations() -> Iterator[tuple[str, list[str]]]:
    """Every ``recstream`` command line: the image's default, compose's and the manifests'."""
    assert dockerfile_json("ENTRYPOINT") == ["recstream"]
    yield "Dockerfile CMD", dockerfile_json("CMD")
    for name, svc in compose_recstream_services().items():
        yield f"compose {name}", list(svc["command"])
    for where, doc in workloads():
        for container in doc["spec"]["template"]["spec"]["containers"]:
            if is_recstream_image(container["image"]):
                assert "command" not in container, f"{where}: the image's entry point is recstream"
                yield f"{where}/{container['name']}", list(container["args"])


INVOCATIONS = list(invocations())


@pytest.mark.parametrize(("where", "args"), INVOCATIONS, ids=[w for w, _ in INVOCATIONS])
def test_every_recstream_command_exists_with_its_options(where: str, args: list[str]) -> None:
    invocation = parse_recstream(where, args)
    # In a container a port bound to loopback cannot be reached from outside it.
    assert set(invocation.listens_on.values()) <= {"0.0.0.0"}, invocation


def names_the_code_reads() -> set[str]:
    """RECSTREAM_* names of the CLI's options and string constants in the product packages."""
    names: set[str] = set()

    def walk(command: Any) -> None:
        for param in command.params:
            envvars = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
            names.update(e for e in envvars if e)
        for sub in (getattr(command, "commands", None) or {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    for package in PRODUCT_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    names.update(re.findall(r"^RECSTREAM_[A-Z0-9_]+$", node.value))
    return names


def test_every_recstream_environment_variable_is_read_by_the_code() -> None:
    known = names_the_code_reads()
    assert {"RECSTREAM_BOOTSTRAP_SERVERS", "RECSTREAM_KAFKA_SASL_PASSWORD"} <= known  # sanity
    files = [p for p in DEPLOY.rglob("*") if p.is_file()]
    assert DEPLOY / ".env.example" in files
    used = {
        (path.relative_to(ROOT).as_posix(), name)
        for path in files
        for name in re.findall(r"RECSTREAM_[A-Z0-9_]+", path.read_text())
    }
    assert used, "deploy/ names no RECSTREAM_* variable at all?"
    assert sorted((where, name) for where, name in used if name not in known) == []


# -- Kubernetes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.30", kubernetes_validate.latest_version()])
def test_the_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    docs = manifests()
    assert {d["kind"] for _, d in docs} >= {"StatefulSet", "Deployment", "Service"}
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} {doc['kind']} {doc['metadata']['name']}: {exc.message}")


def test_a_misspelt_field_fails_the_validation() -> None:
    _, doc = workloads()[0]
    doc = copy.deepcopy(doc)
    doc["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_manifests_run_every_role() -> None:
    k8s = {where for where, _ in workloads()}
    commands = {parse_recstream(w, a).command for w, a in INVOCATIONS if w.rsplit("/", 1)[0] in k8s}
    assert commands >= {("serve",), ("worker", "interests"), ("worker", "encoder")}


def test_every_statefulset_has_its_governing_service() -> None:
    services = {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == "Service"}
    for where, doc in workloads():
        if doc["kind"] == "StatefulSet":
            service = services.get(doc["spec"]["serviceName"])
            assert service is not None, f"{where}: no Service {doc['spec']['serviceName']}"
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert service["spec"]["selector"].items() <= labels.items(), where


def test_the_pods_declare_and_announce_their_metrics_ports() -> None:
    """Each port a role listens on is a named containerPort; metrics are annotated for scraping."""
    for where, doc in workloads():
        template = doc["spec"]["template"]
        for container in template["spec"]["containers"]:
            if not is_recstream_image(container["image"]):
                continue
            invocation = parse_recstream(where, container["args"])
            declared = {p["containerPort"] for p in container.get("ports", [])}
            assert declared == set(invocation.listens_on), where
            annotations = template["metadata"].get("annotations", {})
            if invocation.metrics_port is None:
                assert "prometheus.io/scrape" not in annotations, where
            else:
                assert annotations.get("prometheus.io/scrape") == "true", where
                assert annotations.get("prometheus.io/port") == str(invocation.metrics_port), where
                assert annotations.get("prometheus.io/path", "/metrics") == "/metrics", where


def image_user_id() -> int:
    [useradd] = [rest for ins, rest in dockerfile() if ins == "RUN" and "useradd" in rest]
    match = re.search(r"--uid[ =](\d+)", useradd)
    assert match, "the image's user has no fixed uid, so the manifests cannot name it"
    return int(match.group(1))


def test_the_pods_can_write_their_volumes() -> None:
    # A fresh volume is root's; fsGroup makes it the image user's group, writable.
    uid = image_user_id()
    for where, doc in workloads():
        pod = doc["spec"]["template"]["spec"]
        if any(c.get("volumeMounts") for c in pod["containers"]):
            security = pod.get("securityContext", {})
            assert security.get("runAsUser") == uid, where
            assert security.get("fsGroup") == uid, where


# -- compose ------------------------------------------------------------------------------------


def test_compose_runs_every_role_the_readme_lists() -> None:
    services = compose()["services"]
    commands = {
        parse_recstream(f"compose {name}", list(svc["command"])).command
        for name, svc in compose_recstream_services().items()
    }
    assert commands >= {("topics",), ("serve",), ("worker", "interests"), ("worker", "encoder")}
    images = [str(svc.get("image", "")) for svc in services.values()]
    assert any(i.startswith("apache/kafka:") for i in images), "no Kafka broker"
    assert any(i.startswith("prom/prometheus:") for i in images), "no Prometheus"


def env_file_paths(svc: dict[str, Any]) -> list[tuple[Path, bool]]:
    """(path, required) for each env_file of a compose service."""
    entries = svc.get("env_file", [])
    entries = entries if isinstance(entries, list) else [entries]
    out = []
    for entry in entries:
        if isinstance(entry, str):
            out.append((DEPLOY / entry, True))
        else:
            out.append((DEPLOY / entry["path"], entry.get("required", True)))
    return out


def test_compose_runs_from_a_fresh_clone() -> None:
    """Everything compose reads is in the repository (or optional), and every role finds Kafka."""
    data = compose()
    services = data["services"]
    kafka_env = services["kafka"]["environment"]
    advertised = {
        url.split("://", 1)[1] for url in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    for name, svc in services.items():
        for path, required in env_file_paths(svc):
            assert path.exists() or not required, f"{name}: env_file {path.name} is not in git"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in data.get("volumes", {}), f"{name}: volume {source} not declared"
        for dependency in svc.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        if "build" in svc:
            context = DEPLOY / svc["build"]["context"]
            assert (context / svc["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    for name, svc in compose_recstream_services().items():
        environment = svc.get("environment", {})
        bootstrap = environment.get("RECSTREAM_BOOTSTRAP_SERVERS")
        assert bootstrap in advertised, f"{name}: RECSTREAM_BOOTSTRAP_SERVERS={bootstrap}"


def test_compose_publishes_the_ports_its_roles_listen_on() -> None:
    for name, svc in compose_recstream_services().items():
        invocation = parse_recstream(f"compose {name}", list(svc["command"]))
        published = {int(str(p).split(":")[-1]) for p in svc.get("ports", [])}
        assert published <= set(invocation.listens_on), name


def test_prometheus_scrapes_every_metrics_port() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = set()
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        for static in job["static_configs"]:
            targets.update(static["targets"])
    metrics = {
        f"{name}:{port}"
        for name, svc in compose_recstream_services().items()
        if (port := parse_recstream(name, list(svc["command"])).metrics_port) is not None
    }
    assert metrics == targets
    prometheus = [s for s in compose()["services"].values() if "prometheus" in s.get("image", "")]
    [mount] = prometheus[0]["volumes"]
    assert mount.split(":")[:2] == ["./prometheus.yml", "/etc/prometheus/prometheus.yml"]


# -- the image ----------------------------------------------------------------------------------


def test_the_image_holds_every_package_the_project_installs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    copied = set()
    for instruction, rest in dockerfile():
        if instruction == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                copied.add(source.rstrip("/"))
    assert packages <= copied
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied


def test_the_image_pins_torch_as_make_does() -> None:
    make = re.search(r"^TORCH_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert make
    pins = [re.findall(r"torch==\S+", rest) for ins, rest in dockerfile() if ins == "RUN"]
    assert [p for pin in pins for p in pin] == [make.group(1)]


def test_the_image_build_imports_what_exists() -> None:
    found = 0
    for instruction, rest in dockerfile():
        if instruction == "RUN":
            for module, names in re.findall(r"from ([\w.]+) import ([\w, ]+)", rest):
                imported = importlib.import_module(module)
                for name in names.split(","):
                    assert hasattr(imported, name.strip()), f"{module}.{name.strip()}"
                    found += 1
    assert found


def test_the_image_exposes_the_port_its_default_command_listens_on() -> None:
    invocation = parse_recstream("Dockerfile CMD", dockerfile_json("CMD"))
    exposed = {int(p) for ins, rest in dockerfile() if ins == "EXPOSE" for p in rest.split()}
    assert exposed == set(invocation.listens_on)
