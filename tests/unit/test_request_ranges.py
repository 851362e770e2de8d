"""Every integer field of every request is range-checked before it reaches a backend (issue 16, defect 1).

The services run in-process behind their real interceptor on a loopback port (the
feedback store on a real SQLite file, the reward service on its rules model) and a
descriptor-driven fuzzer sends each RPC the extreme values of every field type. No
call may answer INTERNAL or UNKNOWN, and the server must stay healthy.
"""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf.v1 import feedback_pb2, feedback_pb2_grpc, reward_pb2, reward_pb2_grpc
from services.common.errors import InvalidArgument
from services.common.field_ranges import INT64_MAX, check_ranges, range_error
from services.experience.records import SampleRecord
from services.experience.server import build_servicer
from services.experience.store import ExperienceStore
from services.reward.batcher import BatcherConfig
from services.reward.config import RewardConfig
from services.reward.hosting import ModelHost
from services.reward.rules import RulesConfig, RulesReward
from services.reward.server import RewardServicer
from tests.support.grpc_fuzz import requests_for, serve_in_thread

FEEDBACK = feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"]
REWARD = reward_pb2.DESCRIPTOR.services_by_name["RewardService"]
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
SAMPLE_IDS = [f"s{i}" for i in range(4)]


def _request_class(service, name):
    return message_factory.GetMessageClass(service.methods_by_name[name].input_type)


def test_unsigned_64_bit_fields_above_int64_max_are_named():
    request = feedback_pb2.ExportFeedbackRequest(since_cursor=2**63)
    assert range_error(request) == (
        f"since_cursor = {2**63} is out of range: 64-bit integers must be <= {INT64_MAX} (2^63-1)"
    )
    assert range_error(feedback_pb2.ExportFeedbackRequest(since_cursor=INT64_MAX)) is None
    with pytest.raises(InvalidArgument, match="since_cursor"):
        check_ranges(request)


@pytest.fixture(scope="module")
def feedback_server(tmp_path_factory):
    db = f"sqlite:///{tmp_path_factory.mktemp('ranges')}/feedback.db"
    store = ExperienceStore.open(db)
    store.record_samples(
        [
            SampleRecord(
                sid, "req0", "default", 0, i, "prompt", True, [1, 2], f"answer {i}", [i], [-0.5], "stop", 0, time.time()
            )
            for i, sid in enumerate(SAMPLE_IDS)
        ]
    )
    servicer = build_servicer(store)
    registration = (servicer, feedback_pb2_grpc.add_FeedbackServiceServicer_to_server, FEEDBACK.full_name)
    with serve_in_thread([registration]) as s:
        yield s
    servicer.close()
    store.close()


@pytest.mark.parametrize("method", ["ExportFeedback", "ListPreferences", "ListRatings", "ListPrompts"])
def test_cursor_above_int64_max_is_invalid_argument_not_internal(feedback_server, method):
    request = _request_class(FEEDBACK, method)(since_cursor=2**64 - 1)
    assert feedback_server.call(FEEDBACK, method, request) == grpc.StatusCode.INVALID_ARGUMENT
    assert feedback_server.healthy()


@pytest.mark.parametrize("method", [m.name for m in FEEDBACK.methods])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_feedback_rpcs_never_answer_internal(feedback_server, method, data):
    request = data.draw(requests_for(_request_class(FEEDBACK, method), texts=["", *SAMPLE_IDS]))
    code = feedback_server.call(FEEDBACK, method, request)
    assert code not in BAD_CODES, f"{method}({request}) answered {code}"
    assert feedback_server.healthy()


@pytest.fixture(scope="module")
def reward_server():
    hosts = []

    async def registrations():
        host = ModelHost(BatcherConfig(max_batch_size=4, max_wait_ms=0, max_queue_items=64))
        host.attach([RulesReward("length", RulesConfig(target_words=2))])
        hosts.append(host)
        return [
            (
                RewardServicer(RewardConfig(), host),
                reward_pb2_grpc.add_RewardServiceServicer_to_server,
                REWARD.full_name,
            )
        ]

    with serve_in_thread(registrations) as server:
        yield server
        server.run(hosts[0].close())


@pytest.mark.parametrize("method", [m.name for m in REWARD.methods])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_reward_rpcs_never_answer_internal(reward_server, method, data):
    request = data.draw(requests_for(_request_class(REWARD, method), texts=["", "length", "one two"]))
    code = reward_server.call(REWARD, method, request)
    assert code not in BAD_CODES, f"{method}({request}) answered {code}"
    assert reward_server.healthy()
