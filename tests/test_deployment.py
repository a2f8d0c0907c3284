"""The Docker deployment (Dockerfile, docker-compose.yaml, .env.example), checked without a Docker engine:
the compose file by a real Compose implementation's own validation (Debian's docker-compose, `make
compose`), and the image against what the DAG files import."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from include.cluster import TRY_EXIT_SECONDS

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-worker", "airflow-triggerer",
                    "airflow-init"}


def _compose(tmp_path: Path, env: str) -> subprocess.CompletedProcess:
    """`docker-compose config` over a copy of the deployment's files, with `env` as its .env."""
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed: run `make compose` (make test does)")
    for name in ("docker-compose.yaml", "Dockerfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    (tmp_path / "config").mkdir()
    (tmp_path / ".env").write_text(env)
    return subprocess.run(["docker-compose", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def _filled_env() -> str:
    text = (ROOT / ".env.example").read_text()
    return text.replace("AIRFLOW_FERNET_KEY=\n", "AIRFLOW_FERNET_KEY=fernet-key-of-the-test\n").replace(
        "AIRFLOW_JWT_SECRET=\n", "AIRFLOW_JWT_SECRET=jwt-secret-of-the-test\n")


def test_compose_validates_and_runs_every_airflow_component_on_celery_from_one_image(tmp_path):
    done = _compose(tmp_path, _filled_env())
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert set(services) == AIRFLOW_SERVICES | {"postgres", "redis"}
    images = {services[name]["image"] for name in AIRFLOW_SERVICES}
    assert len(images) == 1  # every Airflow component runs the project's image...
    assert all(services[name]["build"]["context"] == str(tmp_path) for name in AIRFLOW_SERVICES)  # ...built from the Dockerfile
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:") or env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:@redis:")
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:change-me@postgres/")
        assert env["AIRFLOW_CONN_HYPERV_BACKUP_CATALOG"].endswith("@postgres:5432/hyperv_catalog")
        # one Fernet key and one JWT secret for all: the api-server's tokens verify on the workers
        assert (env["AIRFLOW__CORE__FERNET_KEY"], env["AIRFLOW__API_AUTH__JWT_SECRET"]) == ("fernet-key-of-the-test", "jwt-secret-of-the-test")
        assert env["AIRFLOW_CONN_WINRM_HV01"].startswith('{"conn_type": "winrm"')  # connections from .env
        # a try's slot is free within this long of its end, as in every Airflow include/cluster.py starts (README, Run it for real)
        assert env["AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"] == TRY_EXIT_SECONDS, name
        assert any(v.endswith(":/opt/airflow/reports:rw") or v.endswith(":/opt/airflow/reports")
                   for v in services[name]["volumes"]), name  # reports outlive the containers
    assert "hyperv-backup-reports" in config["volumes"]
    assert services["airflow-init"]["user"] == "0:0" and "airflow db migrate" in " ".join(services["airflow-init"]["command"])
    assert any("deploy/postgres-init.sql:/docker-entrypoint-initdb.d/" in v for v in services["postgres"]["volumes"])
    assert "CREATE DATABASE hyperv_catalog" in (ROOT / "deploy" / "postgres-init.sql").read_text()


def test_compose_refuses_to_start_without_the_shared_secrets(tmp_path):
    done = _compose(tmp_path, _filled_env().replace("AIRFLOW_JWT_SECRET=jwt-secret-of-the-test\n", ""))
    assert done.returncode != 0
    assert "set AIRFLOW_JWT_SECRET in .env" in done.stderr


def _third_party_imports() -> set[str]:
    """The top-level modules the DAG files and the plugins import that are neither the project's nor Python's."""
    ours = {"hyperv_backup", "include", "simulator", "dags"}
    found = set()
    for path in [*(ROOT / "dags").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in ours and name not in sys.stdlib_module_names and name != "__future__"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_image_installs_what_the_dag_files_import():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.2-python3\.11$", dockerfile, re.M)
    assert "-r /opt/airflow/requirements.txt" in dockerfile
    assert all(f"COPY --chown=airflow:root {folder} /opt/airflow/{folder}" in dockerfile for folder in ("dags", "plugins", "include"))
    pinned = {_normal(line.split("==")[0].split("[")[0]) for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    base = {_normal(re.split(r"[ ;<>=!~\[]", r)[0]) for r in importlib.metadata.requires("apache-airflow-core") or []}
    distributions = importlib.metadata.packages_distributions()
    modules = _third_party_imports()
    assert {"airflow", "winrm", "pandas", "matplotlib", "sqlalchemy", "pydantic"} <= modules
    missing = {}
    for module in sorted(modules):
        names = {_normal(d) for d in distributions.get(module, [])}
        if not names & (pinned | base | {"apache-airflow-core", "apache-airflow-task-sdk"}):
            missing[module] = sorted(names)
    assert missing == {}, f"imported by the DAG files but installed by neither requirements.txt nor Airflow: {missing}"
