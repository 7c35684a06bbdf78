"""deploy/: every manifest parses, the worker outlives its own shutdown grace, probes hit real routes.

A Kubernetes SIGKILL before the worker has handed its steps back turns a clean
stop into a stale-heartbeat takeover; a probe on a path the API does not serve
restarts every API pod. Both are easy to break by editing YAML, so check them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES = DEPLOY / "kubernetes"


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), f"{path.name}: a document that is not a mapping"
            docs.append(doc)
    return docs


def _kind(kind: str, name: str) -> dict[str, Any]:
    for doc in _documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} named {name} under deploy/kubernetes")


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def test_every_yaml_file_under_deploy_parses() -> None:
    files = [*DEPLOY.glob("*.yml"), *KUBERNETES.glob("*.yaml")]
    assert len(files) >= 7
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    manifests = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_worker_grace_is_longer_than_its_shutdown_grace() -> None:
    settings = _kind("ConfigMap", "envrestore-settings")["data"]
    shutdown_grace = float(settings["ENVRESTORE_SHUTDOWN_GRACE_SECONDS"])
    worker = _kind("Deployment", "envrestore-worker")
    pod_grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert pod_grace >= shutdown_grace + 10, (pod_grace, shutdown_grace)
    assert _container(worker)["args"][0] == "worker"


def test_prometheus_scrapes_the_ports_the_pods_serve_metrics_on() -> None:
    worker = _kind("Deployment", "envrestore-worker")["spec"]["template"]
    container = _container({"spec": {"template": worker}})
    env = {item["name"]: item["value"] for item in container["env"]}
    port = int(env["ENVRESTORE_WORKER_METRICS_PORT"])
    assert env["ENVRESTORE_METRICS_HOST"] == "0.0.0.0"  # noqa: S104 - scraped from the pod network
    assert {"name": "metrics", "containerPort": port} in container["ports"]
    assert worker["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    api = _kind("Deployment", "envrestore-api")["spec"]["template"]
    api_env = {
        item["name"]: item["value"] for item in _container({"spec": {"template": api}})["env"]
    }
    assert api["metadata"]["annotations"]["prometheus.io/port"] == api_env["ENVRESTORE_API_PORT"]


def test_every_pod_reads_the_settings_and_the_secrets() -> None:
    for doc in _documents():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        refs = _container(doc)["envFrom"]
        names = {next(iter(ref.values()))["name"] for ref in refs}
        assert names == {"envrestore-settings", "envrestore-secrets"}, doc["metadata"]["name"]


def test_api_probes_and_service_point_at_what_the_api_serves() -> None:
    health = pytest.importorskip("envrestore.api.health")
    served = {getattr(route, "path", None) for route in health.router.routes}
    api = _container(_kind("Deployment", "envrestore-api"))
    assert api["args"] == ["api"]
    env = {item["name"]: item["value"] for item in api["env"]}
    port = int(env["ENVRESTORE_API_PORT"])
    assert api["ports"] == [{"name": "http", "containerPort": port}]
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {"/healthz", "/readyz"} <= served
    service = _kind("Service", "envrestore-api")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert (
        service["spec"]["selector"]
        == _kind("Deployment", "envrestore-api")["spec"]["selector"]["matchLabels"]
    )


def test_compose_runs_every_component_and_checks_the_api() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "seaweedfs", "migrate", "worker", "scheduler", "api"} <= set(
        services
    )
    assert services["migrate"]["command"] == ["db", "migrate"]
    api = services["api"]
    assert api["command"] == ["api"]
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert api["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    worker = services["worker"]
    grace = float(worker["environment"].get("ENVRESTORE_SHUTDOWN_GRACE_SECONDS", 30))
    worker_stop = worker["stop_grace_period"]
    assert worker_stop.endswith("s") and float(worker_stop[:-1]) > grace
