import hashlib

import pytest
import torch
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.v1 import common_pb2, policy_pb2
from services.common.errors import DataLoss, InvalidArgument
from services.common.weight_stream import (
    PushAssembler,
    TensorSpec,
    fused_groups_for,
    incomplete_units,
    load_unit,
    push_requests,
)

TENSORS = [
    ("a.weight", torch.arange(12, dtype=torch.float32).reshape(3, 4)),
    ("b.bias", torch.linspace(-1, 1, 7).to(torch.bfloat16)),
    ("c.weight", torch.randn(5, 3).to(torch.float16)),
]
MANIFEST = {name: TensorSpec(tuple(t.shape)) for name, t in TENSORS}


def assemble(requests, manifest=MANIFEST, max_bytes=10**9, require_complete=True, fused_groups=None):
    assembler = PushAssembler(manifest, max_bytes, require_complete, fused_groups)
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
        assert torch.equal(
            got.view(torch.uint8) if got.dtype != torch.float32 else got,
            tensor.view(torch.uint8) if tensor.dtype != torch.float32 else tensor,
        )
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
    with pytest.raises(InvalidArgument, match="declared twice"):
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
    hashed = b"x\0float32\0" + b"2\0" + tensor.numpy().tobytes()
    sha = list(push_requests([("x", tensor)], checksum="sha256"))
    assert sha[0].begin.checksum == policy_pb2.CHECKSUM_ALGORITHM_SHA256
    assert sha[-1].commit.sha256 == hashlib.sha256(hashed).digest()
    fast = list(push_requests([("x", tensor)]))  # the default: XXH3-128, named in begin, digest in commit.digest
    assert fast[0].begin.checksum == policy_pb2.CHECKSUM_ALGORITHM_XXH3_128
    assert fast[-1].commit.digest == xxhash.xxh3_128(hashed).digest() and not fast[-1].commit.sha256


def test_checksum_algorithms_verify_and_refuse():
    tensor = torch.tensor([1.0, 2.0])
    manifest = {"x": TensorSpec((2,))}
    for checksum in ("sha256", "xxh3_128"):
        requests = list(push_requests([("x", tensor)], checksum=checksum))
        staged = assemble(requests, manifest)
        assert staged.header.checksum.name == checksum and len(staged.digest) == staged.header.checksum.size
        bad = policy_pb2.PushWeightsRequest()
        bad.CopyFrom(requests[-1])
        if checksum == "sha256":
            bad.commit.sha256 = bytes(32)
        else:
            bad.commit.digest = bytes(16)
        with pytest.raises(DataLoss, match="checksum mismatch"):
            assemble([*requests[:-1], bad], manifest)
    old_sender = list(push_requests([("x", tensor)], checksum="sha256"))
    old_sender[0].begin.ClearField("checksum")  # a sender from before the field: read as SHA-256
    assert assemble(old_sender, manifest).header.checksum.name == "sha256"
    wrong_size = list(push_requests([("x", tensor)]))
    wrong_size[-1].commit.digest = bytes(32)
    with pytest.raises(InvalidArgument, match="16 bytes"):
        assemble(wrong_size, manifest)
    unknown = list(push_requests([("x", tensor)]))
    unknown[0].begin.checksum = 99
    with pytest.raises(InvalidArgument, match="unknown checksum"):
        assemble(unknown, manifest)


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


# A two-layer Llama-shaped manifest for the partial-push rule.
LLAMA = {
    f"model.layers.{i}.{module}.{leaf}": TensorSpec((2,))
    for i in range(2)
    for module in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
        "input_layernorm",
    )
    for leaf in (("weight", "bias") if module == "self_attn.q_proj" else ("weight",))
}
LLAMA["model.embed_tokens.weight"] = TensorSpec((2,))
GROUPS = fused_groups_for("llama")


def llama_push(names):
    return push_requests([(name, torch.ones(2)) for name in names])


def test_fused_groups_come_from_the_model_type_table():
    assert GROUPS == (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
    assert fused_groups_for("qwen2") == GROUPS
    assert fused_groups_for("some-new-arch") is None  # unknown: complete pushes only


def test_load_units_merge_fused_siblings_and_a_modules_tensors():
    q_weight = load_unit("model.layers.0.self_attn.q_proj.weight", GROUPS)
    assert q_weight == load_unit("model.layers.0.self_attn.v_proj.weight", GROUPS)
    assert q_weight == load_unit("model.layers.0.self_attn.q_proj.bias", GROUPS)
    assert q_weight != load_unit("model.layers.1.self_attn.q_proj.weight", GROUPS)
    assert q_weight != load_unit("model.layers.0.self_attn.o_proj.weight", GROUPS)
    assert load_unit("model.layers.0.mlp.gate_proj.weight", GROUPS) == load_unit(
        "model.layers.0.mlp.up_proj.weight", GROUPS
    )
    assert load_unit("model.layers.0.mlp.gate_proj.weight", GROUPS) != load_unit(
        "model.layers.0.mlp.down_proj.weight", GROUPS
    )
    missing = incomplete_units(["model.layers.1.self_attn.k_proj.weight"], LLAMA, GROUPS)
    assert missing == [
        "model.layers.1.self_attn.q_proj.bias",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.1.self_attn.v_proj.weight",
    ]


def test_partial_push_of_whole_fused_units_is_accepted():
    names = [
        *(f"model.layers.0.self_attn.{m}_proj.weight" for m in "qkv"),
        "model.layers.0.self_attn.q_proj.bias",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.1.self_attn.o_proj.weight",
    ]
    staged = assemble(llama_push(names), LLAMA, fused_groups=GROUPS)
    assert sorted(staged.tensors) == sorted(names)


@pytest.mark.parametrize(
    "names, first_missing",
    [
        # q and v without k: the fused qkv parameter would load k from uninitialized memory
        (
            [
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.self_attn.q_proj.bias",
                "model.layers.0.self_attn.v_proj.weight",
            ],
            "model.layers.0.self_attn.k_proj.weight",
        ),
        (["model.layers.1.mlp.up_proj.weight"], "model.layers.1.mlp.gate_proj.weight"),
        # a module's weight without its bias is half a module
        ([f"model.layers.0.self_attn.{m}_proj.weight" for m in "qkv"], "model.layers.0.self_attn.q_proj.bias"),
    ],
)
def test_partial_push_that_splits_a_fused_unit_is_rejected(names, first_missing):
    with pytest.raises(InvalidArgument, match=f"partial push misses .*first: {first_missing}"):
        assemble(llama_push(names), LLAMA, fused_groups=GROUPS)


def test_without_fused_groups_a_partial_push_is_still_refused():
    names = [f"model.layers.0.self_attn.{m}_proj.weight" for m in "qkv"] + ["model.layers.0.self_attn.q_proj.bias"]
    with pytest.raises(InvalidArgument, match="only applies complete pushes"):
        assemble(llama_push(names), LLAMA)
