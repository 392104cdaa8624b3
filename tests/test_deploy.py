"""deploy/: every NATS config is valid, the compose file and manifests parse and use real commands
and settings, and deploy/README.md's commands match the CLI."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import AliasChoices, ValidationError
from pydantic_settings import BaseSettings

from mesh.bus import find_binary
from services.cli import build_parser
from services.http.settings import HttpSettings
from services.mail.settings import MailSettings
from services.settings import LLMSettings, MeshSettings

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
PASSWORDS = {f"MESH_{role}_PASSWORD": "x" for role in ("ADMIN", "BRIDGE", "WORKER", "MAIL")}


def cli_commands() -> set[str]:
    """The subcommands `mesh --help` lists."""
    out = subprocess.run([sys.executable, "-m", "services.cli", "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.search(r"\{([a-z,-]+)\}", out).group(1).split(","))


def check_command(argv: list[str], known: set[str]) -> None:
    assert argv[0] == "mesh", argv
    assert argv[1] in known, f"`mesh {argv[1]}` is not a mesh command"
    build_parser().parse_args(argv[1:])  # exits (SystemExit) on an unknown flag or missing argument


def environment_names(settings: type[BaseSettings]) -> set[str]:
    """The environment variables a settings class reads: its prefixed field names, or their aliases."""
    prefix = settings.model_config.get("env_prefix", "")
    found = set()
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            found |= {str(choice) for choice in alias.choices}
        else:
            found.add(f"{prefix}{name}".upper())
    return found


def check_environment(names: set[str]) -> None:
    fields = set().union(*(environment_names(s) for s in (MeshSettings, HttpSettings, MailSettings, LLMSettings)))
    for name in names:
        if name.startswith("MESH_") and not name.endswith("_PASSWORD") or name == "NATS_URL":
            assert name in fields, f"{name} is not a mesh setting"


@pytest.mark.parametrize("conf", sorted(DEPLOY.rglob("*.conf")), ids=lambda p: p.name)
def test_nats_server_accepts_every_config(conf: Path) -> None:
    result = subprocess.run(
        [find_binary(), "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        env={**os.environ, **PASSWORDS},
    )
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stderr


def test_the_node_configs_form_one_three_node_cluster_with_jetstream() -> None:
    names = set()
    for i in (1, 2, 3):
        text = (DEPLOY / "nats" / f"n{i}.conf").read_text()
        names.add(re.search(r"server_name: (\S+)", text).group(1))
        assert "jetstream {" in text and "include ./auth.conf" in text
        assert sorted(re.findall(r"nats-route://(nats-\d):6222", text)) == ["nats-1", "nats-2", "nats-3"]
    assert names == {"nats-1", "nats-2", "nats-3"}


def test_compose_file_parses_and_runs_real_commands() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"nats-1", "nats-2", "nats-3", "worker", "bridge", "smtp"} <= set(services)
    known = cli_commands()
    commands = {}
    for name, service in services.items():
        if name.startswith("nats-"):
            conf = service["command"][1].rsplit("/", 1)[1]
            assert (DEPLOY / "nats" / conf).is_file()
            continue
        check_command(service["command"], known)
        commands[name] = service["command"][1]
        check_environment(set(service["environment"]))
        assert service["environment"]["MESH_REPLICAS"] == "3"
        assert "healthcheck" in service
    assert commands == {"worker": "worker", "bridge": "http", "smtp": "smtp"}
    assert services["worker"]["deploy"]["replicas"] == 3


def k8s_documents() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def test_kubernetes_manifests_parse_run_real_commands_and_have_health_checks() -> None:
    known = cli_commands()
    docs = k8s_documents()
    config = next(d for _, d in docs if d.get("kind") == "ConfigMap")
    check_environment(set(config["data"]))
    deployments = {d["metadata"]["name"]: d for _, d in docs if d.get("kind") == "Deployment"}
    assert set(deployments) == {"mesh-worker", "mesh-bridge", "mesh-smtp"}
    for deployment in deployments.values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            check_command(container["command"], known)
            check_environment({e["name"] for e in container.get("env", [])})
            assert "livenessProbe" in container and "readinessProbe" in container
    worker = deployments["mesh-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert config["data"]["MESH_METRICS_PORT"] == str(worker["ports"][0]["containerPort"])
    values = dict(docs)["nats-values.yaml"]
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert values["config"]["jetstream"]["enabled"] is True
    users = {u["user"] for u in values["config"]["merge"]["authorization"]["users"]}
    assert users == set(re.findall(r"\{ user: ([\w-]+),", (DEPLOY / "nats" / "auth.conf").read_text()))
    granted = auth_conf_permissions((DEPLOY / "nats" / "auth.conf").read_text())
    for user in values["config"]["merge"]["authorization"]["users"]:
        if "permissions" in user:  # the Helm values grant each user what auth.conf grants, no more, no less
            perms = user["permissions"]
            k8s = {
                (direction, kind): set(perms.get(direction, {}).get(kind, []))
                for direction in ("publish", "subscribe")
                for kind in ("allow", "deny")
            }
            assert k8s == granted[user["user"]], user["user"]


def auth_conf_permissions(text: str) -> dict[str, dict[tuple[str, str], set[str]]]:
    """Each user's publish/subscribe allow/deny subjects in deploy/nats/auth.conf (its variables resolved)."""
    text = "\n".join(line.split("#", 1)[0] if line.lstrip().startswith("#") else line for line in text.splitlines())
    variables = dict(re.findall(r'^\s*(\w+) = "([^"]+)"', text, re.M))

    def subjects(block: str) -> set[str]:
        return {quoted or variables[name] for quoted, name in re.findall(r'"([^"]+)"|\$(\w+)', block)}

    roles: dict[str, dict[tuple[str, str], set[str]]] = {}
    for role, body in re.findall(r"^  (\w+) = \{\n(.*?)^  \}", text, re.M | re.S):
        publish, _, subscribe = body.partition("subscribe:")
        roles[role] = {
            (direction, kind): subjects(m.group(1)) if (m := re.search(kind + r": \[(.*?)\]", section, re.S)) else set()
            for direction, section in (("publish", publish), ("subscribe", subscribe))
            for kind in ("allow", "deny")
        }
    return {user: roles[role] for user, role in re.findall(r"\{ user: ([\w-]+),.*permissions: \$(\w+)", text)}


def readme_commands(path: Path) -> list[list[str]]:
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", path.read_text(), re.S):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("mesh "):
                commands.append(shlex.split(line))
    return commands


def test_deploy_readme_commands_match_the_cli() -> None:
    commands = readme_commands(DEPLOY / "README.md")
    assert {c[1] for c in commands} >= {"ls", "call", "tail", "history"}
    known = cli_commands()
    for argv in commands:
        check_command(argv, known)
    text = (DEPLOY / "README.md").read_text()
    for name in set(re.findall(r"`((?:MESH|NATS)_[A-Z_]+)`", text)) - {"MESH_WORKER_PASSWORD"}:
        if not name.endswith("_"):
            check_environment({name})
    for path in re.findall(r"`((?:nats|k8s)/[\w./-]+|compose\.yaml|Dockerfile|\.env\.example)`", text):
        assert (DEPLOY / path).exists(), path


def test_a_wrong_command_or_setting_is_caught() -> None:
    with pytest.raises(AssertionError):
        check_command(["mesh", "wrokers"], cli_commands())
    with pytest.raises(SystemExit):
        check_command(["mesh", "history"], cli_commands())  # the address is required
    with pytest.raises(AssertionError):
        check_environment({"MESH_METRICS_PROT"})


def test_the_nats_ping_interval_comes_from_the_environment_and_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_NATS_PING_INTERVAL", "2.5")
    assert MeshSettings().nats_options("nats://127.0.0.1:4222", "t").ping_interval == 2.5
    monkeypatch.setenv("MESH_NATS_PING_INTERVAL", "0")
    with pytest.raises(ValidationError):
        MeshSettings()
