"""The policy records live Generate / GenerateStream traffic into the store and hosts FeedbackService.

Starts its own policy server (tiny model) with --experience-db: the shared
`policy_server` fixture runs without a store.
"""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest
from transformers import AutoTokenizer

from rlhf.v1 import feedback_pb2 as fb
from rlhf.v1 import feedback_pb2_grpc, policy_pb2, policy_pb2_grpc
from services.common.client import open_channel
from services.common.process import ServerProcess, free_port
from services.common.security import ClientSecurity
from services.experience.store import ExperienceStore

pytestmark = pytest.mark.integration

PROMPT = "Recommend a book about the sea."


@pytest.fixture(scope="module")
def recording_policy(tiny_policy_dir, tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('experience')}/experience.db"
    port, metrics_port = free_port(), free_port()
    process = ServerProcess(
        "services.policy",
        [
            "--model",
            str(tiny_policy_dir),
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
            "--max-model-len",
            "512",
            "--cpu-kvcache-gib",
            "1",
            "--experience-db",
            url,
            "--record-disabled-tenants",
            "private,secret",
        ],
        tmp_path_factory.mktemp("recording-policy-logs") / "policy.log",
    )
    address = f"127.0.0.1:{port}"
    process.start(address, timeout_s=300)
    channel = open_channel(address, security=ClientSecurity())
    store = ExperienceStore.open(url)
    yield (
        policy_pb2_grpc.PolicyServiceStub(channel),
        feedback_pb2_grpc.FeedbackServiceStub(channel),
        store,
        f"http://127.0.0.1:{metrics_port}/metrics",
    )
    store.close()
    channel.close()
    assert process.stop() == 0, process.log_tail()


def generate(stub, n=2, mode=policy_pb2.RECORDING_MODE_UNSPECIFIED, tenant="", prompt=None, request_id="live-1"):
    prompt = prompt or policy_pb2.Prompt(text=PROMPT, apply_chat_template=True)
    request = policy_pb2.GenerateRequest(
        prompts=[prompt],
        sampling=policy_pb2.SamplingParams(n=n, max_tokens=8, seed=3),
        request_id=request_id,
        recording=mode,
    )
    metadata = (("x-rlhf-tenant", tenant),) if tenant else None
    return stub.Generate(request, metadata=metadata, timeout=60)


def wait_recorded(store, sample_ids, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        found = store.get_samples(sample_ids)
        if len(found) == len(set(sample_ids)):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"recorded {len(found)} of {len(set(sample_ids))} samples")
        time.sleep(0.05)


def test_generate_samples_are_recorded_with_everything_a_trainer_needs(recording_policy):
    stub, _, store, metrics_url = recording_policy
    reply = generate(stub)
    result = reply.results[0]
    ids = [s.sample_id for s in result.samples]
    assert len(set(ids)) == 2 and all(len(i) == 32 for i in ids)
    found = wait_recorded(store, ids)
    for sample in result.samples:
        row = found[sample.sample_id]
        assert (row.request_id, row.tenant, row.prompt_text, row.chat_template) == ("live-1", "default", PROMPT, True)
        assert row.prompt_token_ids == list(result.prompt_token_ids)
        assert row.completion_text == sample.text and row.token_ids == list(sample.token_ids)
        assert row.logprobs == pytest.approx(list(sample.logprobs), abs=1e-6)
        assert row.weight_version == sample.weight_version and row.finish_reason in ("stop", "length")
        assert abs(row.created_at - time.time()) < 120
    body = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    written = [line for line in body.splitlines() if line.startswith("rlhf_policy_records_written_total")]
    assert written and float(written[0].split()[-1]) >= 2


def test_stream_samples_are_recorded_under_the_streamed_ids(recording_policy):
    stub, _, store, _ = recording_policy
    request = policy_pb2.GenerateRequest(
        prompts=[policy_pb2.Prompt(text=PROMPT, apply_chat_template=True)],
        sampling=policy_pb2.SamplingParams(n=2, max_tokens=8),
        request_id="stream-1",
    )
    streamed: dict[tuple[int, int], dict] = {}
    for message in stub.GenerateStream(request, timeout=60):
        entry = streamed.setdefault((message.prompt_index, message.sample_index), {"ids": set(), "tokens": []})
        entry["ids"].add(message.sample_id)
        entry["tokens"].extend(message.token_ids)
    assert all(len(e["ids"]) == 1 for e in streamed.values())  # one id per sample, on every message
    ids = {key: next(iter(e["ids"])) for key, e in streamed.items()}
    found = wait_recorded(store, list(ids.values()))
    for key, sample_id in ids.items():
        assert found[sample_id].token_ids == streamed[key]["tokens"] and found[sample_id].request_id == "stream-1"


def test_opt_out_and_disabled_tenants_are_not_recorded(recording_policy):
    stub, _, store, _ = recording_policy
    off = generate(stub, mode=policy_pb2.RECORDING_MODE_OFF, request_id="off")
    private = generate(stub, mode=policy_pb2.RECORDING_MODE_ON, tenant="private", request_id="private")
    later = generate(stub, n=1, request_id="later")  # the writer is FIFO: once this is stored, the others would be
    wait_recorded(store, [later.results[0].samples[0].sample_id])
    skipped = [s.sample_id for r in (off, private) for s in r.results[0].samples]
    assert all(skipped) and store.get_samples(skipped) == {}


def test_token_id_prompts_are_recorded_with_decoded_text(recording_policy):
    stub, _, store, _ = recording_policy
    reply = generate(stub, n=1, prompt=policy_pb2.Prompt(token_ids=[504, 3458, 314]), request_id="ids")
    row = wait_recorded(store, [reply.results[0].samples[0].sample_id])[reply.results[0].samples[0].sample_id]
    assert row.prompt_token_ids == [504, 3458, 314] and row.prompt_text.strip() and not row.chat_template


def test_feedback_on_live_samples_through_the_policy_port(recording_policy):
    stub, feedback, store, _ = recording_policy
    reply = generate(stub, n=2, request_id="judge-me")
    a, b = (s.sample_id for s in reply.results[0].samples)
    wait_recorded(store, [a, b])
    same_text = reply.results[0].samples[0].text == reply.results[0].samples[1].text
    stored = feedback.SubmitFeedback(
        fb.SubmitFeedbackRequest(
            rater_id="user-42",
            body=fb.FeedbackBody(pairwise=fb.PairwiseChoice(chosen_sample_id=b, rejected_sample_id=a)),
        )
    )
    prefs = feedback.ListPreferences(fb.ListPreferencesRequest(since_cursor=stored.cursor - 1))
    if same_text:
        assert prefs.report.identical_dropped == 1 and not prefs.pairs
    else:
        (pair,) = prefs.pairs
        assert (pair.chosen_sample_id, pair.rejected_sample_id) == (b, a) and pair.prompt_text == PROMPT

    unrecorded = (
        generate(stub, n=1, mode=policy_pb2.RECORDING_MODE_OFF, request_id="nope").results[0].samples[0].sample_id
    )
    with pytest.raises(grpc.RpcError) as raised:
        feedback.SubmitFeedback(
            fb.SubmitFeedbackRequest(rater_id="user-42", body=fb.FeedbackBody(thumbs=fb.Thumbs(sample_id=unrecorded)))
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    prompts = feedback.ListPrompts(fb.ListPromptsRequest())
    assert PROMPT in {p.prompt_text for p in prompts.prompts}


def test_system_turn_and_template_are_rendered_recorded_and_listed(recording_policy, tiny_policy_dir):
    stub, feedback, store, _ = recording_policy
    system = "You are a terse literary critic."
    prompt = policy_pb2.Prompt(text=PROMPT, system=system, apply_chat_template=True, template="critic")
    result = generate(stub, n=1, prompt=prompt, request_id="templated").results[0]
    prompt_ids = list(result.prompt_token_ids)
    system_ids = AutoTokenizer.from_pretrained(tiny_policy_dir).encode(system, add_special_tokens=False)
    assert any(prompt_ids[i : i + len(system_ids)] == system_ids for i in range(len(prompt_ids))), prompt_ids
    row = wait_recorded(store, [result.samples[0].sample_id])[result.samples[0].sample_id]
    assert (row.template, row.prompt_text, row.request_id) == ("critic", PROMPT, "templated")
    listed = feedback.ListPrompts(fb.ListPromptsRequest(template="critic")).prompts
    assert [(p.template, list(p.prompt_token_ids)) for p in listed] == [("critic", prompt_ids)]
    with pytest.raises(grpc.RpcError) as raised:  # a raw completion has no system turn to render it in
        generate(stub, n=1, prompt=policy_pb2.Prompt(text=PROMPT, system=system), request_id="raw")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "system needs text" in raised.value.details()
