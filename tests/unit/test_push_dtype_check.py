"""A push's dtypes are checked against the served checkpoint, not only the list of pushable dtypes (issue 16, 9).

Floating pushes may carry any pushable float dtype (the engine casts to the dtype it serves,
so a float32 push into a bfloat16 server is fine), but a tensor the checkpoint holds as an
integer or boolean (an index buffer, say) cannot be replaced by floating bytes.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from services.common.errors import InvalidArgument
from services.common.weight_stream import PushAssembler, push_requests
from services.policy.weight_staging import read_manifest


@pytest.fixture
def checkpoint(tmp_path):
    tensors = {"w": torch.zeros(2, 3, dtype=torch.bfloat16), "position_ids": torch.arange(4)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_manifest_records_the_checkpoint_dtypes(checkpoint):
    manifest = read_manifest(str(checkpoint))
    assert (manifest["w"].dtype, manifest["position_ids"].dtype) == ("BF16", "I64")


def _push(manifest, tensors):
    receiver = PushAssembler(manifest, 1 << 20, require_complete=False)
    for request in push_requests(tensors):
        receiver.feed(request)
    return receiver.finish()


def test_a_float_push_may_replace_a_float_tensor_in_another_width(checkpoint):
    manifest = read_manifest(str(checkpoint))
    staged = _push(manifest, [("w", torch.ones(2, 3))])  # float32 into a bfloat16 checkpoint
    assert list(staged.names) == ["w"]


def test_a_float_push_cannot_replace_an_integer_tensor(checkpoint):
    manifest = read_manifest(str(checkpoint))
    with pytest.raises(InvalidArgument, match="position_ids: the served checkpoint holds it as I64"):
        _push(manifest, [("position_ids", torch.zeros(4))])
