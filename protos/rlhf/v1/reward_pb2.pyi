from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnsembleAggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENSEMBLE_AGGREGATION_UNSPECIFIED: _ClassVar[EnsembleAggregation]
    ENSEMBLE_AGGREGATION_MEAN: _ClassVar[EnsembleAggregation]
    ENSEMBLE_AGGREGATION_MIN: _ClassVar[EnsembleAggregation]
    ENSEMBLE_AGGREGATION_MEAN_MINUS_STD: _ClassVar[EnsembleAggregation]

class RewardKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REWARD_KIND_UNSPECIFIED: _ClassVar[RewardKind]
    REWARD_KIND_SIMILARITY: _ClassVar[RewardKind]
    REWARD_KIND_CLASSIFIER: _ClassVar[RewardKind]
    REWARD_KIND_RULES: _ClassVar[RewardKind]
ENSEMBLE_AGGREGATION_UNSPECIFIED: EnsembleAggregation
ENSEMBLE_AGGREGATION_MEAN: EnsembleAggregation
ENSEMBLE_AGGREGATION_MIN: EnsembleAggregation
ENSEMBLE_AGGREGATION_MEAN_MINUS_STD: EnsembleAggregation
REWARD_KIND_UNSPECIFIED: RewardKind
REWARD_KIND_SIMILARITY: RewardKind
REWARD_KIND_CLASSIFIER: RewardKind
REWARD_KIND_RULES: RewardKind

class ScoreItem(_message.Message):
    __slots__ = ("prompt", "completion", "reference")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    completion: str
    reference: str
    def __init__(self, prompt: _Optional[str] = ..., completion: _Optional[str] = ..., reference: _Optional[str] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class EnsembleSpec(_message.Message):
    __slots__ = ("members", "aggregation", "k")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[ModelRef]
    aggregation: EnsembleAggregation
    k: float
    def __init__(self, members: _Optional[_Iterable[_Union[ModelRef, _Mapping]]] = ..., aggregation: _Optional[_Union[EnsembleAggregation, str]] = ..., k: _Optional[float] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("model", "items", "model_version", "ensemble", "return_member_scores", "whiten")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_FIELD_NUMBER: _ClassVar[int]
    RETURN_MEMBER_SCORES_FIELD_NUMBER: _ClassVar[int]
    WHITEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    items: _containers.RepeatedCompositeFieldContainer[ScoreItem]
    model_version: str
    ensemble: EnsembleSpec
    return_member_scores: bool
    whiten: bool
    def __init__(self, model: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ScoreItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., ensemble: _Optional[_Union[EnsembleSpec, _Mapping]] = ..., return_member_scores: _Optional[bool] = ..., whiten: _Optional[bool] = ...) -> None: ...

class MemberScores(_message.Message):
    __slots__ = ("model", "model_version", "scores", "whitened_scores")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    WHITENED_SCORES_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    scores: _containers.RepeatedScalarFieldContainer[float]
    whitened_scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., scores: _Optional[_Iterable[float]] = ..., whitened_scores: _Optional[_Iterable[float]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores", "model", "model_version", "members", "whitened_scores")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    WHITENED_SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    model: str
    model_version: str
    members: _containers.RepeatedCompositeFieldContainer[MemberScores]
    whitened_scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., members: _Optional[_Iterable[_Union[MemberScores, _Mapping]]] = ..., whitened_scores: _Optional[_Iterable[float]] = ...) -> None: ...

class ComparePair(_message.Message):
    __slots__ = ("prompt", "completion_a", "completion_b", "reference")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_A_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_B_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    completion_a: str
    completion_b: str
    reference: str
    def __init__(self, prompt: _Optional[str] = ..., completion_a: _Optional[str] = ..., completion_b: _Optional[str] = ..., reference: _Optional[str] = ...) -> None: ...

class CompareRequest(_message.Message):
    __slots__ = ("model", "pairs", "model_version", "ensemble")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_FIELD_NUMBER: _ClassVar[int]
    model: str
    pairs: _containers.RepeatedCompositeFieldContainer[ComparePair]
    model_version: str
    ensemble: EnsembleSpec
    def __init__(self, model: _Optional[str] = ..., pairs: _Optional[_Iterable[_Union[ComparePair, _Mapping]]] = ..., model_version: _Optional[str] = ..., ensemble: _Optional[_Union[EnsembleSpec, _Mapping]] = ...) -> None: ...

class CompareResponse(_message.Message):
    __slots__ = ("prob_a_preferred", "scores_a", "scores_b", "model", "model_version")
    PROB_A_PREFERRED_FIELD_NUMBER: _ClassVar[int]
    SCORES_A_FIELD_NUMBER: _ClassVar[int]
    SCORES_B_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    prob_a_preferred: _containers.RepeatedScalarFieldContainer[float]
    scores_a: _containers.RepeatedScalarFieldContainer[float]
    scores_b: _containers.RepeatedScalarFieldContainer[float]
    model: str
    model_version: str
    def __init__(self, prob_a_preferred: _Optional[_Iterable[float]] = ..., scores_a: _Optional[_Iterable[float]] = ..., scores_b: _Optional[_Iterable[float]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RewardModelInfo(_message.Message):
    __slots__ = ("name", "version", "kind", "description", "uses_reference", "max_batch_size", "loaded_versions", "max_batch_tokens")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    USES_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LOADED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    kind: RewardKind
    description: str
    uses_reference: bool
    max_batch_size: int
    loaded_versions: _containers.RepeatedScalarFieldContainer[str]
    max_batch_tokens: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., kind: _Optional[_Union[RewardKind, str]] = ..., description: _Optional[str] = ..., uses_reference: _Optional[bool] = ..., max_batch_size: _Optional[int] = ..., loaded_versions: _Optional[_Iterable[str]] = ..., max_batch_tokens: _Optional[int] = ...) -> None: ...

class EnsembleInfo(_message.Message):
    __slots__ = ("name", "members", "aggregation", "k", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    members: _containers.RepeatedScalarFieldContainer[str]
    aggregation: EnsembleAggregation
    k: float
    description: str
    def __init__(self, name: _Optional[str] = ..., members: _Optional[_Iterable[str]] = ..., aggregation: _Optional[_Union[EnsembleAggregation, str]] = ..., k: _Optional[float] = ..., description: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "ensembles")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLES_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[RewardModelInfo]
    ensembles: _containers.RepeatedCompositeFieldContainer[EnsembleInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[RewardModelInfo, _Mapping]]] = ..., ensembles: _Optional[_Iterable[_Union[EnsembleInfo, _Mapping]]] = ...) -> None: ...

class GetModelStatsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ScoreStats(_message.Message):
    __slots__ = ("version", "count", "mean", "std", "min", "max", "latest")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    version: str
    count: int
    mean: float
    std: float
    min: float
    max: float
    latest: bool
    def __init__(self, version: _Optional[str] = ..., count: _Optional[int] = ..., mean: _Optional[float] = ..., std: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., latest: _Optional[bool] = ...) -> None: ...

class GetModelStatsResponse(_message.Message):
    __slots__ = ("model", "versions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    versions: _containers.RepeatedCompositeFieldContainer[ScoreStats]
    def __init__(self, model: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ScoreStats, _Mapping]]] = ...) -> None: ...

class RulesDeclaration(_message.Message):
    __slots__ = ("target_words", "length_weight", "required_words", "required_weight", "banned_words", "banned_weight", "case_sensitive")
    TARGET_WORDS_FIELD_NUMBER: _ClassVar[int]
    LENGTH_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_WORDS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BANNED_WORDS_FIELD_NUMBER: _ClassVar[int]
    BANNED_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CASE_SENSITIVE_FIELD_NUMBER: _ClassVar[int]
    target_words: int
    length_weight: float
    required_words: _containers.RepeatedScalarFieldContainer[str]
    required_weight: float
    banned_words: _containers.RepeatedScalarFieldContainer[str]
    banned_weight: float
    case_sensitive: bool
    def __init__(self, target_words: _Optional[int] = ..., length_weight: _Optional[float] = ..., required_words: _Optional[_Iterable[str]] = ..., required_weight: _Optional[float] = ..., banned_words: _Optional[_Iterable[str]] = ..., banned_weight: _Optional[float] = ..., case_sensitive: _Optional[bool] = ...) -> None: ...

class ModelDeclaration(_message.Message):
    __slots__ = ("name", "kind", "path", "description", "rules", "max_batch_size", "max_wait_ms", "max_batch_tokens")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: RewardKind
    path: str
    description: str
    rules: RulesDeclaration
    max_batch_size: int
    max_wait_ms: float
    max_batch_tokens: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[RewardKind, str]] = ..., path: _Optional[str] = ..., description: _Optional[str] = ..., rules: _Optional[_Union[RulesDeclaration, _Mapping]] = ..., max_batch_size: _Optional[int] = ..., max_wait_ms: _Optional[float] = ..., max_batch_tokens: _Optional[int] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelDeclaration
    def __init__(self, model: _Optional[_Union[ModelDeclaration, _Mapping]] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: RewardModelInfo
    def __init__(self, model: _Optional[_Union[RewardModelInfo, _Mapping]] = ...) -> None: ...

class PublishVersionRequest(_message.Message):
    __slots__ = ("model", "expected_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: ModelDeclaration
    expected_version: str
    def __init__(self, model: _Optional[_Union[ModelDeclaration, _Mapping]] = ..., expected_version: _Optional[str] = ...) -> None: ...

class PublishVersionResponse(_message.Message):
    __slots__ = ("model", "version", "previous_version", "changed", "loaded_versions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    LOADED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    previous_version: str
    changed: bool
    loaded_versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., previous_version: _Optional[str] = ..., changed: _Optional[bool] = ..., loaded_versions: _Optional[_Iterable[str]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("unloaded_versions",)
    UNLOADED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    unloaded_versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unloaded_versions: _Optional[_Iterable[str]] = ...) -> None: ...
