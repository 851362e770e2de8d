"""Code that runs inside vLLM's worker processes (loaded by `worker_extension_cls`).

The engine's workers own the model; the gRPC server process does not. A verified
push is staged as a safetensors file on the same host and its path is passed to
the workers through `collective_rpc`, so only a short string crosses vLLM's IPC
and every tensor-parallel worker reads the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class WeightUpdateExtension:
    """Mixed into vLLM's worker class; methods are called via collective_rpc."""

    def load_staged_weights(self, path: str) -> int:
        """Loads every tensor of a staged safetensors file in place; returns the count."""
        from safetensors import safe_open

        count = 0

        def tensors() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal count
            with safe_open(path, framework="pt", device="cpu") as handle:
                for name in handle.keys():
                    count += 1
                    yield name, handle.get_tensor(name)

        reload = getattr(self, "reload_weights", None) or self.model_runner.reload_weights
        reload(weights_iterator=tensors())
        _refresh_output_heads(self.model_runner.get_model())
        return count


def _refresh_output_heads(model: torch.nn.Module) -> None:
    """Re-derives kernel copies of the output head after an in-place reload.

    With tied embeddings the checkpoint has no lm_head tensor, so the reload never
    touches the head; on the CPU backend the head keeps a prepacked GEMM copy of the
    old embedding matrix. Re-running its post-load step repacks the new values
    (on GPU backends the step is a no-op).
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    for module in model.modules():
        if isinstance(module, ParallelLMHead):
            module.quant_method.process_weights_after_loading(module)
