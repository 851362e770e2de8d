"""Auth with scopes and (mutual) TLS on a real server (the reward service: it starts fast)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rlhf.v1 import reward_pb2, reward_pb2_grpc
from services.common.client import open_channel, wait_until_serving
from services.common.process import ServerProcess, free_port
from services.common.security import ClientSecurity
from tests.support.certs import make_certs

pytestmark = pytest.mark.integration

ITEM = reward_pb2.ScoreItem(prompt="Review Dune.", completion="A great book.", reference="A great book.")


@pytest.fixture(scope="module")
def secured_reward(tmp_path_factory):
    root = tmp_path_factory.mktemp("secured")
    certs = make_certs(root / "certs")
    (root / "score.token").write_text("score-secret\n")
    (root / "tokens.toml").write_text(
        f'[[tokens]]\nname = "app"\ntoken_file = "{root / "score.token"}"\nscopes = ["score"]\ntenant = "product"\n'
        '[[tokens]]\nname = "generator"\ntoken_env = "GEN_TOKEN"\nscopes = ["generate"]\n'
    )
    port = free_port()
    process = ServerProcess(
        "services.reward",
        [
            "--port",
            str(port),
            "--metrics-port",
            "0",
            "--auth-tokens-file",
            str(root / "tokens.toml"),
            "--tls-cert-file",
            str(certs.server_cert),
            "--tls-key-file",
            str(certs.server_key),
            "--tls-client-ca-file",
            str(certs.ca),
        ],
        root / "reward.log",
        env={"GEN_TOKEN": "generate-secret"},
    )
    address = f"localhost:{port}"
    client = ClientSecurity(
        tls_ca_file=str(certs.ca), tls_cert_file=str(certs.client_cert), tls_key_file=str(certs.client_key)
    )
    process.launch()
    wait_until_serving(address, 180, is_alive=lambda: process.process.poll() is None, security=client)
    yield address, certs, client
    assert process.stop() == 0


def score(address, security):
    with open_channel(address, security=security) as channel:
        return reward_pb2_grpc.RewardServiceStub(channel).Score(
            reward_pb2.ScoreRequest(model="similarity", items=[ITEM]), timeout=30
        )


def code_of(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_scopes_and_tokens_over_mutual_tls(secured_reward):
    address, _, client = secured_reward
    with_token = lambda token: ClientSecurity(**{**client.__dict__, "token": token})  # noqa: E731
    assert len(score(address, with_token("score-secret")).scores) == 1
    assert code_of(lambda: score(address, client)) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: score(address, with_token("wrong"))) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: score(address, with_token("generate-secret"))) == grpc.StatusCode.PERMISSION_DENIED
    with open_channel(address, security=client) as channel:  # health needs no token
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_tls_is_required(secured_reward):
    address, certs, _ = secured_reward
    plaintext = ClientSecurity(token="score-secret")
    assert code_of(lambda: score(address, plaintext)) == grpc.StatusCode.UNAVAILABLE
    no_client_cert = ClientSecurity(token="score-secret", tls_ca_file=str(certs.ca))
    assert code_of(lambda: score(address, no_client_cert)) == grpc.StatusCode.UNAVAILABLE
