import pytest

from services.common.security import (
    PermissionDenied,
    Principal,
    TokenAuthenticator,
    Unauthenticated,
    required_scope,
)


def bearer(token):
    return [("authorization", f"Bearer {token}")]


@pytest.fixture
def auth():
    return TokenAuthenticator(
        [
            ("s3cret-trainer", Principal("trainer", frozenset({"generate", "admin"}), "research")),
            ("s3cret-app", Principal("app", frozenset({"score"}), "product")),
        ]
    )


def test_scopes_per_method():
    assert required_scope("/rlhf.v1.PolicyService/Generate") == "generate"
    assert required_scope("/rlhf.v1.PolicyService/PushWeights") == "admin"
    assert required_scope("/rlhf.v1.RewardService/Score") == "score"
    assert required_scope("/rlhf.v1.SomethingNew/Anything") == "admin"  # unlisted: the safe default
    assert required_scope("/grpc.health.v1.Health/Check") is None


def test_tokens_and_scopes(auth):
    assert auth.authenticate("/rlhf.v1.PolicyService/PushWeights", bearer("s3cret-trainer")).tenant == "research"
    with pytest.raises(Unauthenticated, match="missing bearer token"):
        auth.authenticate("/rlhf.v1.RewardService/Score", [])
    with pytest.raises(Unauthenticated, match="unknown"):
        auth.authenticate("/rlhf.v1.RewardService/Score", bearer("guess"))
    with pytest.raises(PermissionDenied, match="lacks scope 'admin'"):
        auth.authenticate("/rlhf.v1.PolicyService/PushWeights", bearer("s3cret-app"))
    assert auth.authenticate("/grpc.health.v1.Health/Check", []) is None


def test_health_can_require_a_token():
    closed = TokenAuthenticator([("t", Principal("x", frozenset({"score"}), "d"))], public_health=False)
    with pytest.raises(Unauthenticated):
        closed.authenticate("/grpc.health.v1.Health/Check", [])


def test_tokens_come_from_env_or_files_never_the_config(tmp_path, monkeypatch):
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    monkeypatch.setenv("APP_TOKEN", "from-env")
    config = tmp_path / "tokens.toml"
    config.write_text(
        f'[[tokens]]\nname = "a"\ntoken_env = "APP_TOKEN"\nscopes = ["score"]\n'
        f'[[tokens]]\nname = "b"\ntoken_file = "{secret}"\nscopes = ["admin"]\ntenant = "ops"\n'
    )
    auth = TokenAuthenticator.from_file(str(config))
    assert auth.authenticate("/rlhf.v1.RewardService/Score", bearer("from-env")).name == "a"
    assert auth.authenticate("/rlhf.v1.PolicyService/PushWeights", bearer("from-file")).tenant == "ops"
    config.write_text('[[tokens]]\nname = "c"\ntoken = "inline"\nscopes = ["score"]\n')
    with pytest.raises(ValueError, match="unknown keys"):
        TokenAuthenticator.from_file(str(config))
    config.write_text('[[tokens]]\nname = "c"\ntoken_env = "APP_TOKEN"\nscopes = ["root"]\n')
    with pytest.raises(ValueError, match="scopes"):
        TokenAuthenticator.from_file(str(config))
