from rlhf.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecordingMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECORDING_MODE_UNSPECIFIED: _ClassVar[RecordingMode]
    RECORDING_MODE_ON: _ClassVar[RecordingMode]
    RECORDING_MODE_OFF: _ClassVar[RecordingMode]

class ChecksumAlgorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECKSUM_ALGORITHM_UNSPECIFIED: _ClassVar[ChecksumAlgorithm]
    CHECKSUM_ALGORITHM_SHA256: _ClassVar[ChecksumAlgorithm]
    CHECKSUM_ALGORITHM_XXH3_128: _ClassVar[ChecksumAlgorithm]

class EngineState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENGINE_STATE_UNSPECIFIED: _ClassVar[EngineState]
    ENGINE_STATE_STARTING: _ClassVar[EngineState]
    ENGINE_STATE_SERVING: _ClassVar[EngineState]
    ENGINE_STATE_UPDATING_WEIGHTS: _ClassVar[EngineState]
    ENGINE_STATE_FAILED: _ClassVar[EngineState]

class VersionOrigin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERSION_ORIGIN_UNSPECIFIED: _ClassVar[VersionOrigin]
    VERSION_ORIGIN_CHECKPOINT: _ClassVar[VersionOrigin]
    VERSION_ORIGIN_PUSH: _ClassVar[VersionOrigin]
    VERSION_ORIGIN_ROLLBACK: _ClassVar[VersionOrigin]
RECORDING_MODE_UNSPECIFIED: RecordingMode
RECORDING_MODE_ON: RecordingMode
RECORDING_MODE_OFF: RecordingMode
CHECKSUM_ALGORITHM_UNSPECIFIED: ChecksumAlgorithm
CHECKSUM_ALGORITHM_SHA256: ChecksumAlgorithm
CHECKSUM_ALGORITHM_XXH3_128: ChecksumAlgorithm
ENGINE_STATE_UNSPECIFIED: EngineState
ENGINE_STATE_STARTING: EngineState
ENGINE_STATE_SERVING: EngineState
ENGINE_STATE_UPDATING_WEIGHTS: EngineState
ENGINE_STATE_FAILED: EngineState
VERSION_ORIGIN_UNSPECIFIED: VersionOrigin
VERSION_ORIGIN_CHECKPOINT: VersionOrigin
VERSION_ORIGIN_PUSH: VersionOrigin
VERSION_ORIGIN_ROLLBACK: VersionOrigin

class Prompt(_message.Message):
    __slots__ = ("text", "token_ids", "apply_chat_template", "system", "template")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    APPLY_CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    apply_chat_template: bool
    system: str
    template: str
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., apply_chat_template: _Optional[bool] = ..., system: _Optional[str] = ..., template: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("n", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos")
    N_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    ignore_eos: bool
    def __init__(self, n: _Optional[int] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., ignore_eos: _Optional[bool] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompts", "sampling", "request_id", "recording")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDING_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[Prompt]
    sampling: SamplingParams
    request_id: str
    recording: RecordingMode
    def __init__(self, prompts: _Optional[_Iterable[_Union[Prompt, _Mapping]]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., request_id: _Optional[str] = ..., recording: _Optional[_Union[RecordingMode, str]] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("index", "text", "token_ids", "logprobs", "finish_reason", "weight_version", "sample_id")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    finish_reason: _common_pb2.FinishReason
    weight_version: int
    sample_id: str
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., weight_version: _Optional[int] = ..., sample_id: _Optional[str] = ...) -> None: ...

class PromptResult(_message.Message):
    __slots__ = ("prompt_token_ids", "samples")
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    def __init__(self, prompt_token_ids: _Optional[_Iterable[int]] = ..., samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[PromptResult]
    def __init__(self, results: _Optional[_Iterable[_Union[PromptResult, _Mapping]]] = ...) -> None: ...

class GenerateStreamResponse(_message.Message):
    __slots__ = ("prompt_index", "sample_index", "text_delta", "token_ids", "logprobs", "finish_reason", "weight_version", "prompt_token_ids", "sample_id")
    PROMPT_INDEX_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    prompt_index: int
    sample_index: int
    text_delta: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    finish_reason: _common_pb2.FinishReason
    weight_version: int
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sample_id: str
    def __init__(self, prompt_index: _Optional[int] = ..., sample_index: _Optional[int] = ..., text_delta: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., weight_version: _Optional[int] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sample_id: _Optional[str] = ...) -> None: ...

class PushBegin(_message.Message):
    __slots__ = ("expected_version", "num_tensors", "total_bytes", "note", "version", "push_id", "checksum", "segment")
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_TENSORS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    expected_version: int
    num_tensors: int
    total_bytes: int
    note: str
    version: int
    push_id: str
    checksum: ChecksumAlgorithm
    segment: SharedSegment
    def __init__(self, expected_version: _Optional[int] = ..., num_tensors: _Optional[int] = ..., total_bytes: _Optional[int] = ..., note: _Optional[str] = ..., version: _Optional[int] = ..., push_id: _Optional[str] = ..., checksum: _Optional[_Union[ChecksumAlgorithm, str]] = ..., segment: _Optional[_Union[SharedSegment, _Mapping]] = ...) -> None: ...

class SharedSegment(_message.Message):
    __slots__ = ("path", "host_id")
    PATH_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    path: str
    host_id: str
    def __init__(self, path: _Optional[str] = ..., host_id: _Optional[str] = ...) -> None: ...

class PushCommit(_message.Message):
    __slots__ = ("sha256", "digest")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    sha256: bytes
    digest: bytes
    def __init__(self, sha256: _Optional[bytes] = ..., digest: _Optional[bytes] = ...) -> None: ...

class PushWeightsRequest(_message.Message):
    __slots__ = ("begin", "chunk", "commit")
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    begin: PushBegin
    chunk: _common_pb2.TensorChunk
    commit: PushCommit
    def __init__(self, begin: _Optional[_Union[PushBegin, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ..., commit: _Optional[_Union[PushCommit, _Mapping]] = ...) -> None: ...

class PushWeightsResponse(_message.Message):
    __slots__ = ("weight_version", "previous_version", "num_tensors", "total_bytes", "receive_seconds", "apply_seconds", "push_id", "sha256", "digest", "checksum")
    WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_TENSORS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    APPLY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    weight_version: int
    previous_version: int
    num_tensors: int
    total_bytes: int
    receive_seconds: float
    apply_seconds: float
    push_id: str
    sha256: bytes
    digest: bytes
    checksum: ChecksumAlgorithm
    def __init__(self, weight_version: _Optional[int] = ..., previous_version: _Optional[int] = ..., num_tensors: _Optional[int] = ..., total_bytes: _Optional[int] = ..., receive_seconds: _Optional[float] = ..., apply_seconds: _Optional[float] = ..., push_id: _Optional[str] = ..., sha256: _Optional[bytes] = ..., digest: _Optional[bytes] = ..., checksum: _Optional[_Union[ChecksumAlgorithm, str]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("model", "weight_version", "state", "running_requests", "max_model_len", "vocab_size", "engine", "version_note", "version_since_unix", "restorable_versions", "highest_version", "weight_transfer", "transfer_workers", "current", "host_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    VERSION_NOTE_FIELD_NUMBER: _ClassVar[int]
    VERSION_SINCE_UNIX_FIELD_NUMBER: _ClassVar[int]
    RESTORABLE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_TRANSFER_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_WORKERS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    weight_version: int
    state: EngineState
    running_requests: int
    max_model_len: int
    vocab_size: int
    engine: str
    version_note: str
    version_since_unix: float
    restorable_versions: _containers.RepeatedCompositeFieldContainer[WeightVersionInfo]
    highest_version: int
    weight_transfer: str
    transfer_workers: int
    current: WeightVersionInfo
    host_id: str
    def __init__(self, model: _Optional[str] = ..., weight_version: _Optional[int] = ..., state: _Optional[_Union[EngineState, str]] = ..., running_requests: _Optional[int] = ..., max_model_len: _Optional[int] = ..., vocab_size: _Optional[int] = ..., engine: _Optional[str] = ..., version_note: _Optional[str] = ..., version_since_unix: _Optional[float] = ..., restorable_versions: _Optional[_Iterable[_Union[WeightVersionInfo, _Mapping]]] = ..., highest_version: _Optional[int] = ..., weight_transfer: _Optional[str] = ..., transfer_workers: _Optional[int] = ..., current: _Optional[_Union[WeightVersionInfo, _Mapping]] = ..., host_id: _Optional[str] = ...) -> None: ...

class WeightVersionInfo(_message.Message):
    __slots__ = ("version", "note", "applied_unix", "push_id", "sha256", "origin", "digest", "checksum")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_UNIX_FIELD_NUMBER: _ClassVar[int]
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    version: int
    note: str
    applied_unix: float
    push_id: str
    sha256: bytes
    origin: VersionOrigin
    digest: bytes
    checksum: ChecksumAlgorithm
    def __init__(self, version: _Optional[int] = ..., note: _Optional[str] = ..., applied_unix: _Optional[float] = ..., push_id: _Optional[str] = ..., sha256: _Optional[bytes] = ..., origin: _Optional[_Union[VersionOrigin, str]] = ..., digest: _Optional[bytes] = ..., checksum: _Optional[_Union[ChecksumAlgorithm, str]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("version", "reason")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    version: int
    reason: str
    def __init__(self, version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("weight_version", "previous_version", "num_tensors", "apply_seconds")
    WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_TENSORS_FIELD_NUMBER: _ClassVar[int]
    APPLY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    weight_version: int
    previous_version: int
    num_tensors: int
    apply_seconds: float
    def __init__(self, weight_version: _Optional[int] = ..., previous_version: _Optional[int] = ..., num_tensors: _Optional[int] = ..., apply_seconds: _Optional[float] = ...) -> None: ...

class InitWeightTransferRequest(_message.Message):
    __slots__ = ("master_address", "master_port", "world_size", "rank_offset", "packed", "packed_buffer_size_bytes", "packed_num_buffers")
    MASTER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MASTER_PORT_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    RANK_OFFSET_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    PACKED_BUFFER_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PACKED_NUM_BUFFERS_FIELD_NUMBER: _ClassVar[int]
    master_address: str
    master_port: int
    world_size: int
    rank_offset: int
    packed: bool
    packed_buffer_size_bytes: int
    packed_num_buffers: int
    def __init__(self, master_address: _Optional[str] = ..., master_port: _Optional[int] = ..., world_size: _Optional[int] = ..., rank_offset: _Optional[int] = ..., packed: _Optional[bool] = ..., packed_buffer_size_bytes: _Optional[int] = ..., packed_num_buffers: _Optional[int] = ...) -> None: ...

class InitWeightTransferResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: int
    def __init__(self, workers: _Optional[int] = ...) -> None: ...

class NcclTensor(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class BeginNcclPushRequest(_message.Message):
    __slots__ = ("begin", "tensors", "sha256")
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    begin: PushBegin
    tensors: _containers.RepeatedCompositeFieldContainer[NcclTensor]
    sha256: bytes
    def __init__(self, begin: _Optional[_Union[PushBegin, _Mapping]] = ..., tensors: _Optional[_Iterable[_Union[NcclTensor, _Mapping]]] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class BeginNcclPushResponse(_message.Message):
    __slots__ = ("push_id", "serving_version", "reserved_seconds")
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESERVED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    push_id: str
    serving_version: int
    reserved_seconds: float
    def __init__(self, push_id: _Optional[str] = ..., serving_version: _Optional[int] = ..., reserved_seconds: _Optional[float] = ...) -> None: ...

class CommitNcclPushRequest(_message.Message):
    __slots__ = ("push_id",)
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    push_id: str
    def __init__(self, push_id: _Optional[str] = ...) -> None: ...
