import hashlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.v1 import common_pb2, policy_pb2
from services.common.errors import DataLoss, InvalidArgument
from services.common.weight_stream import PushAssembler, TensorSpec, push_requests

TENSORS = [
    ("a.weight", torch.arange(12, dtype=torch.float32).reshape(3, 4)),
    ("b.bias", torch.linspace(-1, 1, 7).to(torch.bfloat16)),
    ("c.weight", torch.randn(5, 3).to(torch.float16)),
]
MANIFEST = {name: TensorSpec(tuple(t.shape)) for name, t in TENSORS}


def assemble(requests, manifest=MANIFEST, max_bytes=10**9, require_complete=True):
    assembler = PushAssembler(manifest, max_bytes, require_complete)
    for request in requests:
        assembler.feed(request)
    return assembler.finish()


@pytest.mark.parametrize("chunk_bytes", [1, 5, 16, 4096])
def test_round_trip_is_bit_exact(chunk_bytes):
    staged = assemble(push_requests(TENSORS, chunk_bytes, expected_version=3, note="n"))
    assert list(staged.tensors) == [name for name, _ in TENSORS]
    for name, tensor in TENSORS:
        got = staged.tensors[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape
        assert torch.equal(got.view(torch.uint8) if got.dtype != torch.float32 else got, tensor.view(torch.uint8) if tensor.dtype != torch.float32 else tensor)
    assert staged.expected_version == 3 and staged.note == "n"
    assert staged.total_bytes == sum(t.numel() * t.element_size() for _, t in TENSORS)


def test_small_chunks_split_tensors():
    requests = list(push_requests(TENSORS, chunk_bytes=8))
    chunks = [r.chunk for r in requests if r.WhichOneof("item") == "chunk"]
    assert len(chunks) > len(TENSORS)
    assert all(len(c.data) <= 8 for c in chunks)


def test_cut_off_stream_yields_nothing():
    requests = list(push_requests(TENSORS, chunk_bytes=8))
    with pytest.raises(InvalidArgument, match="before its `commit`"):
        assemble(requests[: len(requests) // 2])


def test_corrupted_byte_is_data_loss():
    requests = list(push_requests(TENSORS, chunk_bytes=8))
    victim = requests[3].chunk
    victim.data = bytes([victim.data[0] ^ 0xFF]) + victim.data[1:]
    with pytest.raises(DataLoss, match="checksum"):
        assemble(requests)


def test_wrong_shape_unknown_name_and_dtype_are_rejected():
    with pytest.raises(InvalidArgument, match="shape"):
        assemble(push_requests([("a.weight", torch.zeros(4, 3))]), require_complete=False)
    with pytest.raises(InvalidArgument, match="unknown tensor"):
        assemble(push_requests([("nope", torch.zeros(1))]), require_complete=False)
    requests = list(push_requests([("a.weight", torch.zeros(3, 4))]))
    requests[1].chunk.dtype = common_pb2.DTYPE_UNSPECIFIED
    with pytest.raises(InvalidArgument, match="dtype"):
        assemble(requests, require_complete=False)
    with pytest.raises(InvalidArgument, match="cannot be pushed"):
        list(push_requests([("a.weight", torch.zeros(3, 4, dtype=torch.int64))]))


def test_incomplete_push_rejected_when_complete_required():
    with pytest.raises(InvalidArgument, match="misses 2"):
        assemble(push_requests(TENSORS[:1]))
    assert list(assemble(push_requests(TENSORS[:1]), require_complete=False).tensors) == ["a.weight"]


def test_protocol_violations():
    requests = list(push_requests(TENSORS, chunk_bytes=8))
    with pytest.raises(InvalidArgument, match="start with a `begin`"):
        assemble(requests[1:])
    with pytest.raises(InvalidArgument, match="two `begin`"):
        assemble([requests[0], *requests])
    with pytest.raises(InvalidArgument, match="sent twice"):
        assemble(push_requests([TENSORS[0], TENSORS[0]]), require_complete=False)
    skipped = [r for i, r in enumerate(requests) if i != 2]
    with pytest.raises(InvalidArgument, match="offset"):
        assemble(skipped)
    with pytest.raises(InvalidArgument, match="at most 50"):
        assemble(requests, max_bytes=50)
    with pytest.raises(InvalidArgument, match="after commit"):
        assemble([*requests, requests[-1]])


def test_digest_definition_matches_proto_comment():
    tensor = torch.tensor([1.0, 2.0])
    commit = list(push_requests([("x", tensor)]))[-1].commit.sha256
    expected = hashlib.sha256(b"x\0float32\0" + b"2\0" + tensor.numpy().tobytes()).digest()
    assert commit == expected


@settings(max_examples=40, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=3), min_size=1, max_size=4),
    chunk=st.integers(1, 64),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
)
def test_round_trip_property(shapes, chunk, dtype):
    tensors = [(f"t{i}", torch.randn(*shape).to(dtype)) for i, shape in enumerate(shapes)]
    manifest = {name: TensorSpec(tuple(t.shape)) for name, t in tensors}
    staged = assemble(push_requests(tensors, chunk), manifest)
    for name, tensor in tensors:
        assert torch.equal(staged.tensors[name].float(), tensor.float())


def test_empty_request_rejected():
    assembler = PushAssembler(MANIFEST, 10**9)
    assembler.feed(next(iter(push_requests(TENSORS))))
    with pytest.raises(InvalidArgument, match="empty PushWeightsRequest"):
        assembler.feed(policy_pb2.PushWeightsRequest())
