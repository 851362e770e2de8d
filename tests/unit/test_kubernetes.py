"""deploy/kubernetes/ manifests: well-formed, and their ports, probes and addresses match the services' defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from services.common.config import load_config
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
    assert config.policy_address == f"dns:///policy:{policy_port}"
    assert config.reward_address == f"dns:///reward:{reward_port}"
    assert config.weight_transfer == "grpc"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": config.metrics_port, "nccl": config.nccl_master_port}
    (address_env,) = [e for e in container["env"] if e["name"] == "RLHF_TRAINER_NCCL_MASTER_ADDRESS"]
    assert address_env["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == config.metrics_port
    claim = next(v for v in spec["volumes"] if v["name"] == "runs")["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in objects
    assert any(m["mountPath"] == "/runs" for m in container["volumeMounts"])
    assert config.output_dir.startswith("/runs/")
