"""The policy's staging file sink: a push streamed straight into a safetensors file, or nothing left behind."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from services.common.errors import InvalidArgument
from services.common.weight_stream import PushAssembler, TensorSpec, push_requests
from services.policy.weight_staging import SafetensorsFileSink

TENSORS = {
    "model.layers.0.self_attn.q_proj.weight": torch.randn(6, 4),
    "model.norm.weight": torch.randn(4).to(torch.bfloat16),
    "lm_head.weight": torch.randn(3, 4).half(),
}
MANIFEST = {name: TensorSpec(tuple(t.shape)) for name, t in TENSORS.items()}


def assembler(tmp_path, require_complete=True) -> PushAssembler:
    return PushAssembler(MANIFEST, 1 << 30, require_complete, sink=SafetensorsFileSink(tmp_path, MANIFEST))


def test_a_whole_push_is_a_valid_safetensors_file_with_the_sent_bytes(tmp_path):
    receiver = assembler(tmp_path)
    for request in push_requests(list(TENSORS.items()), chunk_bytes=7):
        receiver.feed(request)
    staged = receiver.finish()
    loaded = load_file(str(staged.path))
    assert list(staged.names) == list(TENSORS)
    for name, tensor in TENSORS.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    header = int.from_bytes(staged.path.read_bytes()[:8], "little")
    assert (8 + header) % 64 == 0, "tensor data starts aligned"


def test_a_cut_off_push_leaves_no_file(tmp_path):
    receiver = assembler(tmp_path)
    requests = list(push_requests(list(TENSORS.items()), chunk_bytes=16))
    for request in requests[:-1]:  # no commit
        receiver.feed(request)
    with pytest.raises(InvalidArgument, match="commit"):
        receiver.finish()
    receiver.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_rejected_chunk_leaves_no_file(tmp_path):
    receiver = assembler(tmp_path)
    bad = {"model.norm.weight": torch.randn(5)}  # wrong shape
    with pytest.raises(InvalidArgument, match="shape"):
        for request in push_requests(list(bad.items())):
            receiver.feed(request)
    receiver.discard()
    assert list(tmp_path.iterdir()) == []
