"""The PostgreSQL variants of deploy/: the Kubernetes overlay deploy/k8s-postgres and the compose
file deploy/compose.postgres.yaml run several replicas on one database, and the tools reject
broken copies of them (deploy/check.sh validates them beside the SQLite base)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from service.settings import Settings, SettingsError
from tests.deploy.conftest import compose_config, edit, kustomize_build, run_check

# PostgreSQL's default max_connections, which neither variant raises.
MAX_CONNECTIONS = 100
FILLED_URL = "postgresql://cirelay:secret@db.example.com:5432/cirelay"


def overlay(tools: dict[str, Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) → resource, as kustomize renders deploy/k8s-postgres."""
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for doc in kustomize_build(tools, "k8s-postgres")
    }


def only(rendered: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    [resource] = [doc for (k, _), doc in rendered.items() if k == kind]
    return resource


def cirelay_container(rendered: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    [container] = only(rendered, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def filled_environment(rendered: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    """What the container's environment is once every Secret is filled in: ``env`` entries from
    Secrets, then ``envFrom`` sources, as the kubelet resolves them."""
    container = cirelay_container(rendered)
    environment: dict[str, str] = {}
    for source in container["envFrom"]:
        if "configMapRef" in source:
            environment |= rendered["ConfigMap", source["configMapRef"]["name"]]["data"]
        else:
            secret = rendered["Secret", source["secretRef"]["name"]]["stringData"]
            environment |= {key: f"value-of-{key.lower()}" for key in secret}
    for variable in container.get("env", []):
        reference = variable["valueFrom"]["secretKeyRef"]
        secret = rendered["Secret", reference["name"]]["stringData"]
        assert reference["key"] in secret, variable
        environment[variable["name"]] = FILLED_URL
    return environment


# --- Kubernetes ---------------------------------------------------------------------------------


def test_the_overlay_runs_three_replicas_rolled_without_a_gap(tools: dict[str, Path]) -> None:
    deployment = only(overlay(tools), "Deployment")["spec"]
    assert deployment["replicas"] == 3
    assert deployment["strategy"]["type"] == "RollingUpdate"
    # A new pod is ready before an old one goes: a rollout never drops below the replica count.
    assert deployment["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    [spread] = deployment["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"].items() <= (
        deployment["template"]["metadata"]["labels"].items()
    )


def test_the_overlay_scales_from_two_and_keeps_one_through_drains(tools: dict[str, Path]) -> None:
    rendered = overlay(tools)
    hpa = only(rendered, "HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] == 2
    assert hpa["maxReplicas"] >= only(rendered, "Deployment")["spec"]["replicas"]
    assert hpa["scaleTargetRef"]["name"] == only(rendered, "Deployment")["metadata"]["name"]
    budget = only(rendered, "PodDisruptionBudget")["spec"]
    assert budget["minAvailable"] == 1
    assert "maxUnavailable" not in budget


def test_the_overlay_keeps_nothing_on_the_pod(tools: dict[str, Path]) -> None:
    rendered = overlay(tools)
    assert not [key for key in rendered if key[0] == "PersistentVolumeClaim"]
    pod = only(rendered, "Deployment")["spec"]["template"]["spec"]
    assert [volume["name"] for volume in pod["volumes"]] == ["tmp"]
    assert [mount["mountPath"] for mount in cirelay_container(rendered)["volumeMounts"]] == ["/tmp"]


def test_the_overlay_is_the_base_less_its_volume_plus_the_database_secret(
    tools: dict[str, Path],
) -> None:
    rendered = overlay(tools)
    base = {(doc["kind"], doc["metadata"]["name"]) for doc in kustomize_build(tools, "k8s")}
    expected = base - {("PersistentVolumeClaim", "cirelay-data")} | {("Secret", "cirelay-database")}
    assert set(rendered) == expected
    namespaces = {doc["metadata"].get("namespace") for doc in rendered.values()}
    assert namespaces == {None, "cirelay"}  # None: the Namespace itself


def test_the_database_url_comes_from_a_secret_left_unfilled(tools: dict[str, Path]) -> None:
    rendered = overlay(tools)
    assert "CIRELAY_DATABASE_URL" not in only(rendered, "ConfigMap")["data"]
    [variable] = cirelay_container(rendered)["env"]
    assert variable["name"] == "CIRELAY_DATABASE_URL"
    reference = variable["valueFrom"]["secretKeyRef"]
    secret = rendered["Secret", reference["name"]]
    assert secret["stringData"] == {reference["key"]: ""}, "no credentials in the repository"
    assert secret["metadata"]["namespace"] == only(rendered, "Deployment")["metadata"]["namespace"]


def test_the_overlay_settings_load_and_serve_once_the_secrets_are_filled(
    tools: dict[str, Path],
) -> None:
    rendered = overlay(tools)
    settings = Settings.load(filled_environment(rendered))
    settings.check_serve()
    assert settings.database_url == FILLED_URL
    # Every pod the autoscaler may run, plus a rollout's surge pod, gets its whole pool.
    hpa = only(rendered, "HorizontalPodAutoscaler")["spec"]
    surge = only(rendered, "Deployment")["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    assert (hpa["maxReplicas"] + surge) * settings.database_pool_size < MAX_CONNECTIONS


def test_an_unfilled_database_secret_stops_the_pod_from_starting(tools: dict[str, Path]) -> None:
    environment = filled_environment(overlay(tools)) | {"CIRELAY_DATABASE_URL": ""}
    with pytest.raises(SettingsError, match="CIRELAY_DATABASE_URL"):
        Settings.load(environment)


# --- docker compose -----------------------------------------------------------------------------


def postgres_stack(tools: dict[str, Path]) -> dict[str, Any]:
    services: dict[str, Any] = compose_config(tools, "compose.postgres.yaml")["services"]
    return services


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    return {key: value or "" for key, value in service["environment"].items()}


def test_compose_runs_several_replicas_on_the_postgres_service(tools: dict[str, Path]) -> None:
    services = postgres_stack(tools)
    cirelay, postgres = services["cirelay"], services["postgres"]
    assert cirelay["deploy"]["replicas"] >= 2
    assert cirelay["command"] == ["serve"], "one shared emulator, not one sandbox per replica"
    assert "volumes" not in cirelay
    assert cirelay["depends_on"]["postgres"]["condition"] == "service_healthy"
    settings = Settings.load(environment_of(cirelay))
    settings.check_serve()
    url = urlsplit(settings.database_url)
    database = environment_of(postgres)
    assert (url.scheme, url.hostname, url.port) == ("postgresql", "postgres", 5432)
    assert (url.username, url.password, url.path) == (
        database["POSTGRES_USER"],
        database["POSTGRES_PASSWORD"],
        "/" + database["POSTGRES_DB"],
    )
    assert cirelay["deploy"]["replicas"] * settings.database_pool_size < MAX_CONNECTIONS


def test_compose_publishes_one_port_per_replica(tools: dict[str, Path]) -> None:
    cirelay = postgres_stack(tools)["cirelay"]
    [port] = cirelay["ports"]
    first, last = (int(part) for part in port["published"].split("-"))
    assert last - first + 1 == cirelay["deploy"]["replicas"]
    assert port["target"] == Settings.load(environment_of(cirelay)).port


def test_compose_replicas_sign_with_the_shared_emulators_key(tools: dict[str, Path]) -> None:
    services = postgres_stack(tools)
    emulator = Settings.load(environment_of(services["emulator"]))
    cirelay = Settings.load(environment_of(services["cirelay"]))
    assert services["emulator"]["command"] == ["emulator"]
    assert emulator.emulator_credentials == f"{cirelay.ci_secret_id}:{cirelay.ci_secret_key}"
    endpoint = urlsplit(cirelay.ci_endpoint)
    assert (endpoint.hostname, endpoint.port) == ("emulator", emulator.emulator_port)
    # CI calls back on the service name, which reaches every replica.
    assert urlsplit(cirelay.public_url).hostname == "cirelay"


def test_the_sqlite_stack_is_unchanged_by_the_postgres_file(tools: dict[str, Path]) -> None:
    services = compose_config(tools)["services"]
    assert "postgres" not in services
    assert "replicas" not in services["cirelay"].get("deploy", {})
    assert Settings.load(environment_of(services["cirelay"])).database_url.startswith("sqlite:///")


# --- ... and the tools reject broken copies -----------------------------------------------------


def test_kubeconform_rejects_a_broken_overlay(tools: dict[str, Path], deploy_copy: Path) -> None:
    edit(deploy_copy / "k8s-postgres" / "hpa.yaml", "minReplicas: 2", 'minReplicas: "2"')
    done = run_check("k8s", deploy=deploy_copy)
    assert done.returncode != 0
    assert "k8s-postgres, Kubernetes 1.29.0:" in done.stdout
    assert "got string, want" in done.stdout


def test_kustomize_rejects_an_overlay_patch_that_is_missing(
    tools: dict[str, Path], deploy_copy: Path
) -> None:
    (deploy_copy / "k8s-postgres" / "pdb.yaml").unlink()
    done = run_check("k8s", deploy=deploy_copy)
    assert done.returncode != 0
    assert "pdb.yaml" in done.stdout


def test_docker_compose_rejects_a_broken_postgres_file(
    tools: dict[str, Path], deploy_copy: Path
) -> None:
    edit(
        deploy_copy / "compose.postgres.yaml",
        "    deploy:\n      replicas: 3\n",
        "    deploy:\n      replica: 3\n",
    )
    done = run_check("compose", deploy=deploy_copy)
    assert done.returncode != 0
    assert "compose.yaml: valid" in done.stdout, "the SQLite stack is checked first and passes"
    assert "additional properties 'replica' not allowed" in done.stdout
