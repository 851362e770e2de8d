"""SIGTERM: health turns NOT_SERVING, in-flight generation finishes, new work is refused, exit 0."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rlhf.v1 import common_pb2, policy_pb2, policy_pb2_grpc
from services.common.client import open_channel
from tests.integration.policy_fixtures import launch_policy

pytestmark = pytest.mark.integration


def test_sigterm_drains_in_flight_generation(tiny_policy_dir, tmp_path):
    server, address, _, _ = launch_policy(
        tiny_policy_dir, tmp_path / "policy.log", extra_args=("--shutdown-delay-s", "2", "--grace-s", "60")
    )
    server.wait_serving(address, timeout_s=300)
    try:
        with open_channel(address) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            messages, started = [], threading.Event()

            def stream():
                request = policy_pb2.GenerateRequest(
                    prompts=[policy_pb2.Prompt(token_ids=[1, 2, 3])],
                    sampling=policy_pb2.SamplingParams(max_tokens=300, temperature=1.0, seed=1),
                )
                for message in stub.GenerateStream(request, timeout=120):
                    messages.append(message)
                    started.set()

            reader = threading.Thread(target=stream)
            reader.start()
            assert started.wait(60)
            server.process.send_signal(signal.SIGTERM)
            statuses = set()
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    statuses.add(health.Check(health_pb2.HealthCheckRequest(), timeout=1).status)
                except grpc.RpcError:
                    break
                time.sleep(0.1)
            assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
            reader.join(120)
            tokens = sum(len(m.token_ids) for m in messages)
            assert messages[-1].finish_reason in (common_pb2.FINISH_REASON_LENGTH, common_pb2.FINISH_REASON_STOP)
            assert messages[-1].finish_reason == common_pb2.FINISH_REASON_STOP or tokens == 300
            with pytest.raises(grpc.RpcError):  # draining: new work is refused
                stub.GetStatus(policy_pb2.GetStatusRequest(), timeout=5)
        assert server.process.wait(90) == 0
    finally:
        server.stop()
