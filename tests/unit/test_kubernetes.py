"""deploy/kubernetes/ manifests: well-formed, and their ports, probes and addresses match the services' defaults."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services.common.config import env_names, load_config
from services.policy.config import PolicyConfig
from services.reward.config import RewardConfig
from services.trainer.config import TrainerConfig

K8S = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
GRPC_SERVICES = {
    # name: (config class, env prefix, gRPC health service name the server registers)
    "policy": (PolicyConfig, "RLHF_POLICY_", "rlhf.v1.PolicyService"),
    "reward": (RewardConfig, "RLHF_REWARD_", "rlhf.v1.RewardService"),
}


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in found, f"{key} defined twice"
                found[key] = doc
    return found


def _container(workload: dict) -> dict:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _parsed(container: dict, config_cls, prefix: str, argv_from: int):
    """The service's own config parser reads the manifest's flags and env, so a typo or wrong value fails here."""
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    argv = container["command"][argv_from:]
    saved = {}
    try:
        for key, value in env.items():
            saved[key] = os.environ.get(key)
            os.environ[key] = value
        return load_config(config_cls, argv, env_prefix=prefix)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.parametrize("name", sorted(GRPC_SERVICES))
def test_grpc_deployment_probes_ports_and_scrape(objects, name):
    config_cls, prefix, health_name = GRPC_SERVICES[name]
    deployment = objects[("Deployment", name)]
    assert deployment["spec"]["replicas"] >= 2, "replicas behind the headless Service"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = _container(deployment)
    assert container["command"][:3] == ["python", "-m", f"services.{name}"]
    config = _parsed(container, config_cls, prefix, 3)
    defaults = config_cls()
    assert (config.port, config.metrics_port) == (defaults.port, defaults.metrics_port)
    assert config.host == "0.0.0.0", "probes and peers reach the pod IP, not loopback"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container[probe]["grpc"]
        assert grpc_probe["port"] == config.port, probe
    # readiness follows the service's own health entry (NOT_SERVING while loading and while draining)
    assert container["readinessProbe"]["grpc"]["service"] == health_name
    assert container["startupProbe"]["grpc"]["service"] == health_name
    # the drain outlasts the health flip, and the pod's grace period outlasts both
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.shutdown_delay_s + config.grace_s

    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == config.metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("name", ["policy", "reward", "trainer"])
def test_headless_services_select_their_pods(objects, name):
    service = objects[("Service", name)]
    assert service["spec"]["clusterIP"] == "None", "headless: DNS returns every pod for client-side balancing"
    workload = objects.get(("Deployment", name)) or objects[("Job", name)]
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    container_ports = {p["name"]: p["containerPort"] for p in _container(workload)["ports"]}
    for port in service["spec"]["ports"]:
        assert container_ports[port["targetPort"]] == port["port"], (name, port)


def test_policy_asks_for_a_gpu_and_takes_grpc_pushes_by_default(objects):
    container = _container(objects[("Deployment", "policy")])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    config = _parsed(container, PolicyConfig, "RLHF_POLICY_", 3)
    assert (config.device, config.weight_transfer) == ("cuda", "grpc")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/dev/shm" in mounts, "pushes are staged in /dev/shm"


def test_trainer_reaches_every_replica_and_offers_the_nccl_rendezvous(objects):
    job = objects[("Job", "trainer")]
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never" and job["spec"].get("parallelism", 1) == 1
    container = _container(job)
    assert container["command"][:4] == ["python", "-m", "services.trainer", "train"]
    config = _parsed(container, TrainerConfig, "RLHF_TRAINER_", 4)
    policy_port = PolicyConfig().port
    reward_port = RewardConfig().port
    assert config.endpoints.policy == f"dns:///policy:{policy_port}"
    assert config.endpoints.reward == f"dns:///reward:{reward_port}"
    assert config.push.weight_transfer == "grpc"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": config.run.metrics_port, "nccl": config.push.nccl_master_port}
    (address_env,) = [e for e in container["env"] if e["name"] == "RLHF_TRAINER_PUSH__NCCL_MASTER_ADDRESS"]
    assert address_env["name"] in env_names(TrainerConfig, "RLHF_TRAINER_")
    assert address_env["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == config.run.metrics_port
    claim = next(v for v in spec["volumes"] if v["name"] == "runs")["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in objects
    assert any(m["mountPath"] == "/runs" for m in container["volumeMounts"])
    assert config.run.output_dir.startswith("/runs/")


AUTH_TOKENS_FILE = K8S.parents[0] / "auth" / "tokens.toml"
AUTH_SERVERS = {"policy": (PolicyConfig, "RLHF_POLICY_"), "reward": (RewardConfig, "RLHF_REWARD_")}


def _documents() -> list[tuple[str, dict]]:
    paths = sorted(K8S.glob("*.yaml"))
    return [(path.name, doc) for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize(("name", "doc"), _documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifests_match_the_kubernetes_api_schemas(name, doc):
    """Every object against the API's OpenAPI schemas (offline, strict: unknown fields fail too)."""
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def _secret_env(container: dict) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


@pytest.mark.parametrize("name", sorted(AUTH_SERVERS))
def test_grpc_servers_require_tokens_from_the_secret(objects, name):
    config_cls, prefix = AUTH_SERVERS[name]
    deployment = objects[("Deployment", name)]
    container = _container(deployment)
    config = _parsed(container, config_cls, prefix, 3)
    assert config.auth_tokens_file == "/etc/rlhf/tokens.toml" and not config.insecure
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/rlhf")
    assert mount.get("readOnly") is True
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    config_map = objects[("ConfigMap", volume["configMap"]["name"])]
    carried = config_map["data"]["tokens.toml"]
    assert carried == AUTH_TOKENS_FILE.read_text(), "auth.yaml must carry deploy/auth/tokens.toml"
    declared = {entry["token_env"] for entry in tomllib.loads(config_map["data"]["tokens.toml"])["tokens"]}
    assert _secret_env(container) == {env: ("rlhf-tokens", env) for env in declared}
    if name == "reward":
        assert config.model_root == "/models", "admin LoadModel must be confined to the model directory"


def test_trainer_takes_its_admin_token_from_the_secret(objects):
    container = _container(objects[("Job", "trainer")])
    assert _secret_env(container)["RLHF_CLIENT_TOKEN"] == ("rlhf-tokens", "RLHF_TOKEN_TRAINER")
    trainer = next(e for e in tomllib.loads(AUTH_TOKENS_FILE.read_text())["tokens"] if e["name"] == "trainer")
    assert trainer["token_env"] == "RLHF_TOKEN_TRAINER" and "admin" in trainer["scopes"]
