import pytest

from services.common.errors import ResourceExhausted
from services.policy.sampling import Limits
from services.policy.server import PolicyServicer
from services.policy.weights import WeightManager


def test_admission_is_bounded_and_released(tmp_path):
    servicer = PolicyServicer(
        engine=None,
        tokenizer=None,
        limits=Limits(1, 1, 1, 2, 10),
        model_name="m",
        max_concurrent_requests=2,
        weights=WeightManager(None, manifest={}, staging=tmp_path, max_push_bytes=1, drain_timeout_s=1),
    )
    with servicer._admission(), servicer._admission():
        with pytest.raises(ResourceExhausted, match="limit 2"):
            with servicer._admission():
                pass
    with servicer._admission():  # slots came back
        pass
