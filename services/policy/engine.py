"""The vLLM adapter: the only module of the policy service that imports vLLM.

Starts the async engine with our worker extension (in-place weight loads), turns
engine-neutral sampling specs into vLLM's, streams per-sample deltas with the
sampled tokens' logprobs, and applies staged weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from services.policy.config import PolicyConfig
from services.policy.sampling import SamplingSpec

log = logging.getLogger(__name__)

WORKER_EXTENSION = "services.policy.worker_extension.WeightUpdateExtension"


@dataclass(frozen=True)
class SampleDelta:
    """New tokens of one sample; `finish_reason` ("stop", "length", "abort") on the last."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str | None


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    # bf16 is emulated (slow) on CPUs without AVX-512 BF16; fp32 is the fast path there.
    return "float32" if device == "cpu" else "bfloat16"


class VllmEngine:
    def __init__(self, config: PolicyConfig, model_dir: str) -> None:
        self.config = config
        self.model_dir = model_dir
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self._engine = None
        if config.weight_transfer == "nccl" and self.device != "cuda":
            raise RuntimeError(
                f"weight_transfer=nccl needs CUDA, but the engine runs on {self.device!r} "
                "(no GPU visible or --device=cpu); start with --weight-transfer=grpc"
            )

    @property
    def transfer_workers(self) -> int:
        """Workers that join an NCCL weight-transfer group: one per tensor-parallel rank (no data parallelism here)."""
        return self.config.tensor_parallel_size if self.config.weight_transfer == "nccl" else 0

    @property
    def description(self) -> str:
        import vllm

        return f"vllm {vllm.__version__} ({self.device}, {self.dtype})"

    def start(self) -> None:
        """Builds the engine (blocking, tens of seconds: run it in an executor)."""
        if self.device == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.config.cpu_kvcache_gib:g}")
            os.environ.setdefault(
                "VLLM_CPU_OMP_THREADS_BIND", self.config.cpu_threads_bind or f"0-{os.cpu_count() - 1}"
            )
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=self.model_dir,
            dtype=self.dtype,
            enforce_eager=self.config.enforce_eager,
            max_model_len=self.config.max_model_len,
            max_num_seqs=self.config.max_num_seqs,
            seed=self.config.seed,
            gpu_memory_utilization=self.config.gpu_memory_utilization,
            tensor_parallel_size=self.config.tensor_parallel_size,
            worker_extension_cls=WORKER_EXTENSION,
            # Logprobs of the distribution actually sampled from (after temperature),
            # which is what the trainer's importance ratio needs.
            logprobs_mode="processed_logprobs",
            disable_log_stats=False,
            **self._weight_transfer_args(),
        )
        log.info("starting vLLM engine model=%s device=%s dtype=%s", self.model_dir, self.device, self.dtype)
        self._engine = AsyncLLM.from_engine_args(args)

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], spec: SamplingSpec, sample_index: int, prompt_index: int = 0
    ) -> AsyncIterator[SampleDelta]:
        """Streams one sample. Cancelling the iteration aborts the engine request."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            n=1,
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            top_k=spec.top_k if spec.top_k > 0 else 0,
            seed=spec.sample_seed(sample_index, prompt_index),
            stop=list(spec.stop) or None,
            ignore_eos=spec.ignore_eos,
            logprobs=0,
            output_kind=RequestOutputKind.DELTA,
        )
        async for output in self._engine.generate(TokensPrompt(prompt_token_ids=prompt_token_ids), params, request_id):
            completion = output.outputs[0]
            token_ids = list(completion.token_ids)
            logprobs = [float(entry[token].logprob) for entry, token in zip(completion.logprobs or [], token_ids)]
            yield SampleDelta(token_ids, logprobs, completion.text, completion.finish_reason)

    async def abort(self, request_ids: list[str]) -> None:
        if request_ids:
            await self._engine.abort(request_ids)

    async def load_weights(self, staged_file: str) -> int:
        """Loads a staged safetensors file into every worker, then drops cached prefixes."""
        counts = await self._engine.collective_rpc("load_staged_weights", args=(staged_file,))
        await self._engine.reset_prefix_cache()
        return int(counts[0])

    def _weight_transfer_args(self) -> dict:
        """vLLM builds its NCCL weight-transfer engine in every worker only when asked at start-up."""
        if self.config.weight_transfer != "nccl":
            return {}
        from vllm.config.weight_transfer import WeightTransferConfig

        return {"weight_transfer_config": WeightTransferConfig(backend="nccl")}

    async def init_weight_transfer(self, init_info: dict) -> None:
        """Joins every worker to the trainer's NCCL group (vLLM's NCCLWeightTransferInitInfo fields); blocks until the trainer joins."""
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        await self._engine.init_weight_transfer_engine(WeightTransferInitRequest(init_info=init_info))

    async def receive_weights(self, update_info: dict) -> int:
        """Receives one NCCL broadcast round (vLLM's NCCLWeightTransferUpdateInfo fields) into the model, in place."""
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        await self._engine.start_weight_update()
        await self._engine.update_weights(WeightTransferUpdateRequest(update_info=update_info))
        await self._engine.finish_weight_update()
        await self._engine.reset_prefix_cache()
        return len(update_info["names"])

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
