"""A real Prometheus scrapes the running policy and reward services during a short load test.

Prometheus (Debian's `prometheus` package; `make test` installs it) runs on loopback with
a generated config scraping both services' metrics endpoints every second. The load
comes from the loadtest package. Everything is checked through Prometheus's HTTP
API, polling with a bound until the scrapes after the load have landed; the
Grafana dashboard's queries are run through the same API to prove they parse.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from services.common.process import free_port
from services.loadtest.config import LoadTestConfig
from services.loadtest.driver import run_load_test
from services.loadtest.runner import LoadShape

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "rlhf.json"


def _deployed_policy_relabeling() -> list[dict]:
    """The policy job's metric relabeling from deploy/prometheus.yml, so the test runs the shipped rule."""
    jobs = {job["job_name"]: job for job in yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]}
    return jobs["policy"].get("metric_relabel_configs", [])


def _get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclasses.dataclass(frozen=True)
class Prometheus:
    url: str

    def query(self, expr: str) -> dict:
        status, body = _get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        reply = json.loads(body)
        assert status == 200 and reply["status"] == "success", f"{expr}: {body}"
        return reply["data"]

    def value(self, expr: str) -> float | None:
        """The first sample of an instant vector, or None while the series is absent."""
        result = self.query(expr)["result"]
        return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def prometheus(policy_server, reward_server, tmp_path_factory: pytest.TempPathFactory):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed; `make test` installs it (apt-get install -y prometheus)")
    root = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "policy",
                "static_configs": [{"targets": [urlparse(policy_server.metrics_url).netloc]}],
                "metric_relabel_configs": _deployed_policy_relabeling(),
            },
            {"job_name": "reward", "static_configs": [{"targets": [urlparse(reward_server.metrics_url).netloc]}]},
        ],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(root / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"prometheus exited:\n{(root / 'prometheus.log').read_text()[-3000:]}"
            try:
                if _get(f"{url}/-/ready", timeout_s=2)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            log_tail = (root / "prometheus.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"prometheus not ready after 60 s:\n{log_tail}"
            time.sleep(0.2)
        yield Prometheus(url)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for(prometheus: Prometheus, checks: dict[str, float], timeout_s: float = 60.0) -> dict[str, float | None]:
    """Polls until every `expr` reaches its minimum; fails listing the ones that did not."""
    deadline = time.monotonic() + timeout_s
    while True:
        values = {expr: prometheus.value(expr) for expr in checks}
        missing = {
            expr: values[expr] for expr, minimum in checks.items() if values[expr] is None or values[expr] < minimum
        }
        if not missing:
            return values
        if time.monotonic() > deadline:
            pytest.fail(
                "series absent or below the expected value after the load:\n"
                + "\n".join(f"  {expr} = {value} (want >= {checks[expr]})" for expr, value in missing.items())
            )
        time.sleep(0.5)


STREAMS_OK = 'sum(grpc_server_handled_total{job="policy",grpc_method="GenerateStream",grpc_code="OK"})'
GENERATES_OK = 'sum(grpc_server_handled_total{job="policy",grpc_method="Generate",grpc_code="OK"})'
SCORES_OK = 'sum(grpc_server_handled_total{job="reward",grpc_method="Score",grpc_code="OK"})'
TOKENS = "sum(rlhf_policy_generation_tokens_total)"
TTFTS = "sum(rlhf_policy_time_to_first_token_seconds_count)"
ITEMS = 'sum(rlhf_reward_items_total{model="tiny-rm"})'


def _mean(histogram: str, selector: str = "") -> str:
    return f"sum({histogram}_sum{selector}) / sum({histogram}_count{selector})"


def test_prometheus_scrapes_request_latency_and_version_series(
    prometheus: Prometheus, policy_server, reward_server
) -> None:
    # Both targets are scraped before any load, so counters are seen rising from a known point.
    _wait_for(prometheus, {'up{job="policy"}': 1, 'up{job="reward"}': 1}, timeout_s=30)
    before = {expr: prometheus.value(expr) or 0 for expr in (STREAMS_OK, GENERATES_OK, SCORES_OK, TOKENS, TTFTS, ITEMS)}

    policy = LoadTestConfig(
        target=policy_server.address,
        num_requests=10,
        duration_s=60,
        warmup_requests=1,
        output_len=16,
        timeout_s=60,
        progress=False,
        goodput=("e2el:60000",),
    )
    (stream,) = asyncio.run(run_load_test("policy", policy, [LoadShape(concurrency=3)]))
    unary_config = dataclasses.replace(policy, rpc="Generate", num_requests=4)
    (unary,) = asyncio.run(run_load_test("policy", unary_config, [LoadShape(concurrency=2)]))
    reward = LoadTestConfig(
        target=reward_server.address,
        reward_model="tiny-rm",
        items_per_request=2,
        num_requests=24,
        duration_s=60,
        warmup_requests=1,
        timeout_s=30,
        progress=False,
    )
    (scored,) = asyncio.run(run_load_test("reward", reward, [LoadShape(request_rate=40.0, max_concurrency=4)]))

    # What the client saw: every request served, with streamed timings where there is a stream.
    assert (stream["completed"], stream["failed"]) == (10, 0), stream["errors"]
    assert stream["total_output_tokens"] > 10 and stream["request_goodput"] == pytest.approx(
        stream["request_throughput"]
    )
    assert 0 < stream["median_ttft_ms"] <= stream["median_e2el_ms"]
    assert stream["mean_itl_ms"] is not None and stream["mean_tpot_ms"] is not None
    assert (unary["completed"], unary["failed"]) == (4, 0) and unary["mean_ttft_ms"] is None
    assert (scored["completed"], scored["failed"], scored["total_items"]) == (24, 0, 48)

    # What Prometheus scraped: at least the load just sent (plus warm-ups), on top of what was there.
    values = _wait_for(
        prometheus,
        {
            STREAMS_OK: before[STREAMS_OK] + 11,  # 10 measured + 1 warm-up
            GENERATES_OK: before[GENERATES_OK] + 5,
            SCORES_OK: before[SCORES_OK] + 25,
            TOKENS: before[TOKENS] + stream["total_output_tokens"] + unary["total_output_tokens"],
            TTFTS: before[TTFTS] + 15,
            "sum(rlhf_policy_inter_token_latency_seconds_count)": 1,
            "sum(rlhf_policy_request_time_per_output_token_seconds_count)": 1,
            "sum(rlhf_policy_e2e_request_latency_seconds_count)": 15,
            'sum(grpc_server_handling_seconds_count{job="policy",grpc_method="GenerateStream"})': 11,
            ITEMS: before[ITEMS] + 50,  # 25 requests x 2 items
            'sum(rlhf_reward_batch_size_count{model="tiny-rm"})': 1,
            "rlhf_policy_weight_version": 0,
            "sum(vllm:generation_tokens_total)": 1,  # vLLM's own series, under vLLM's names
            "sum(vllm:time_to_first_token_seconds_count)": 1,
            "count(vllm:kv_cache_usage_perc)": 1,
            'count(rlhf_reward_model_info{model="tiny-rm"})': 1,
        },
    )
    # Plausible values: server-side latencies are positive and within the client's bounds.
    mean_ttft = prometheus.value(_mean("rlhf_policy_time_to_first_token_seconds"))
    mean_e2e = prometheus.value(_mean("rlhf_policy_e2e_request_latency_seconds"))
    assert 0 < mean_ttft <= mean_e2e < 60
    assert 1 <= prometheus.value(_mean("rlhf_reward_batch_size", '{model="tiny-rm"}')) <= 32
    assert values["rlhf_policy_weight_version"] == int(values["rlhf_policy_weight_version"])
    assert prometheus.value("max(rlhf_policy_engine_state)") == 2  # SERVING


def test_dashboard_queries_parse_in_prometheus(prometheus: Prometheus) -> None:
    """Every Grafana panel query is valid PromQL for this Prometheus (an error reply fails `query`)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    for expr in exprs:
        assert prometheus.query(expr)["resultType"] in ("vector", "scalar", "matrix")
