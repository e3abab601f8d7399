# Written by scripts/generate_protos.py, which moves the module from archadapt.v1 to archadapt_client.v1.
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    UINT8: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_VALIDATE: _ClassVar[Phase]
    PHASE_ADAPT: _ClassVar[Phase]
    PHASE_DERIVE: _ClassVar[Phase]
    PHASE_FINETUNE: _ClassVar[Phase]
    PHASE_EVALUATE: _ClassVar[Phase]
    PHASE_EXPORT: _ClassVar[Phase]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    QUEUED: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    SUCCEEDED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]
DTYPE_UNSPECIFIED: DType
UINT8: DType
FLOAT32: DType
PHASE_UNSPECIFIED: Phase
PHASE_VALIDATE: Phase
PHASE_ADAPT: Phase
PHASE_DERIVE: Phase
PHASE_FINETUNE: Phase
PHASE_EVALUATE: Phase
PHASE_EXPORT: Phase
JOB_STATE_UNSPECIFIED: JobState
QUEUED: JobState
RUNNING: JobState
SUCCEEDED: JobState
FAILED: JobState
CANCELLED: JobState

class RawArray(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "raw")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawArray
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawArray, _Mapping]] = ...) -> None: ...

class AdaptOptions(_message.Message):
    __slots__ = ("seed", "inner_steps", "finetune_steps", "max_parameters", "max_multiply_accumulates", "genotype_samples")
    SEED_FIELD_NUMBER: _ClassVar[int]
    INNER_STEPS_FIELD_NUMBER: _ClassVar[int]
    FINETUNE_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MAX_MULTIPLY_ACCUMULATES_FIELD_NUMBER: _ClassVar[int]
    GENOTYPE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    seed: int
    inner_steps: int
    finetune_steps: int
    max_parameters: int
    max_multiply_accumulates: int
    genotype_samples: int
    def __init__(self, seed: _Optional[int] = ..., inner_steps: _Optional[int] = ..., finetune_steps: _Optional[int] = ..., max_parameters: _Optional[int] = ..., max_multiply_accumulates: _Optional[int] = ..., genotype_samples: _Optional[int] = ...) -> None: ...

class AdaptRequest(_message.Message):
    __slots__ = ("images", "labels", "class_names", "options")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    labels: _containers.RepeatedScalarFieldContainer[int]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    options: AdaptOptions
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., labels: _Optional[_Iterable[int]] = ..., class_names: _Optional[_Iterable[str]] = ..., options: _Optional[_Union[AdaptOptions, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("phase", "step", "total_steps", "loss", "elapsed_seconds")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    phase: Phase
    step: int
    total_steps: int
    loss: float
    elapsed_seconds: float
    def __init__(self, phase: _Optional[_Union[Phase, str]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., loss: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("offset", "data", "total_bytes")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_bytes: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class EdgeProbabilities(_message.Message):
    __slots__ = ("cell_type", "edge", "source", "target", "probabilities")
    CELL_TYPE_FIELD_NUMBER: _ClassVar[int]
    EDGE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    cell_type: str
    edge: int
    source: int
    target: int
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, cell_type: _Optional[str] = ..., edge: _Optional[int] = ..., source: _Optional[int] = ..., target: _Optional[int] = ..., probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class PhaseTiming(_message.Message):
    __slots__ = ("phase", "seconds")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    phase: Phase
    seconds: float
    def __init__(self, phase: _Optional[_Union[Phase, str]] = ..., seconds: _Optional[float] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("support_examples", "validation_examples", "validation_accuracy", "validation_loss", "onnx_max_abs_diff")
    SUPPORT_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_LOSS_FIELD_NUMBER: _ClassVar[int]
    ONNX_MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    support_examples: int
    validation_examples: int
    validation_accuracy: float
    validation_loss: float
    onnx_max_abs_diff: float
    def __init__(self, support_examples: _Optional[int] = ..., validation_examples: _Optional[int] = ..., validation_accuracy: _Optional[float] = ..., validation_loss: _Optional[float] = ..., onnx_max_abs_diff: _Optional[float] = ...) -> None: ...

class AdaptResult(_message.Message):
    __slots__ = ("request_id", "genotype_json", "edge_probabilities", "metrics", "timings", "parameter_count", "multiply_accumulates", "model_bytes", "model_sha256", "class_names", "checkpoint_id", "top_genotypes")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    GENOTYPE_JSON_FIELD_NUMBER: _ClassVar[int]
    EDGE_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    MULTIPLY_ACCUMULATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    TOP_GENOTYPES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    genotype_json: str
    edge_probabilities: _containers.RepeatedCompositeFieldContainer[EdgeProbabilities]
    metrics: Metrics
    timings: _containers.RepeatedCompositeFieldContainer[PhaseTiming]
    parameter_count: int
    multiply_accumulates: int
    model_bytes: int
    model_sha256: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    checkpoint_id: str
    top_genotypes: _containers.RepeatedCompositeFieldContainer[RankedGenotype]
    def __init__(self, request_id: _Optional[str] = ..., genotype_json: _Optional[str] = ..., edge_probabilities: _Optional[_Iterable[_Union[EdgeProbabilities, _Mapping]]] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ..., timings: _Optional[_Iterable[_Union[PhaseTiming, _Mapping]]] = ..., parameter_count: _Optional[int] = ..., multiply_accumulates: _Optional[int] = ..., model_bytes: _Optional[int] = ..., model_sha256: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., checkpoint_id: _Optional[str] = ..., top_genotypes: _Optional[_Iterable[_Union[RankedGenotype, _Mapping]]] = ...) -> None: ...

class RankedGenotype(_message.Message):
    __slots__ = ("genotype_json", "probability", "parameter_count", "multiply_accumulates")
    GENOTYPE_JSON_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    MULTIPLY_ACCUMULATES_FIELD_NUMBER: _ClassVar[int]
    genotype_json: str
    probability: float
    parameter_count: int
    multiply_accumulates: int
    def __init__(self, genotype_json: _Optional[str] = ..., probability: _Optional[float] = ..., parameter_count: _Optional[int] = ..., multiply_accumulates: _Optional[int] = ...) -> None: ...

class AdaptEvent(_message.Message):
    __slots__ = ("progress", "model_chunk", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    model_chunk: ModelChunk
    result: AdaptResult
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., model_chunk: _Optional[_Union[ModelChunk, _Mapping]] = ..., result: _Optional[_Union[AdaptResult, _Mapping]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InputSpec(_message.Message):
    __slots__ = ("channels", "height", "width", "mean", "std")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    channels: int
    height: int
    width: int
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, channels: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ...) -> None: ...

class SearchSpace(_message.Message):
    __slots__ = ("primitives", "nodes", "cells", "reduce_cells", "channels", "never_sample_none", "final_relu", "sample_two_inputs", "constant_channels")
    PRIMITIVES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    REDUCE_CELLS_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    NEVER_SAMPLE_NONE_FIELD_NUMBER: _ClassVar[int]
    FINAL_RELU_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_TWO_INPUTS_FIELD_NUMBER: _ClassVar[int]
    CONSTANT_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    primitives: _containers.RepeatedScalarFieldContainer[str]
    nodes: int
    cells: int
    reduce_cells: _containers.RepeatedScalarFieldContainer[int]
    channels: int
    never_sample_none: bool
    final_relu: bool
    sample_two_inputs: bool
    constant_channels: bool
    def __init__(self, primitives: _Optional[_Iterable[str]] = ..., nodes: _Optional[int] = ..., cells: _Optional[int] = ..., reduce_cells: _Optional[_Iterable[int]] = ..., channels: _Optional[int] = ..., never_sample_none: _Optional[bool] = ..., final_relu: _Optional[bool] = ..., sample_two_inputs: _Optional[bool] = ..., constant_channels: _Optional[bool] = ...) -> None: ...

class RequestLimits(_message.Message):
    __slots__ = ("max_images", "min_classes", "max_classes", "max_image_side", "max_request_bytes", "max_image_pixels", "max_dataset_bytes")
    MAX_IMAGES_FIELD_NUMBER: _ClassVar[int]
    MIN_CLASSES_FIELD_NUMBER: _ClassVar[int]
    MAX_CLASSES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_DATASET_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_images: int
    min_classes: int
    max_classes: int
    max_image_side: int
    max_request_bytes: int
    max_image_pixels: int
    max_dataset_bytes: int
    def __init__(self, max_images: _Optional[int] = ..., min_classes: _Optional[int] = ..., max_classes: _Optional[int] = ..., max_image_side: _Optional[int] = ..., max_request_bytes: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., max_dataset_bytes: _Optional[int] = ...) -> None: ...

class JobLimits(_message.Message):
    __slots__ = ("max_queued_jobs", "max_concurrent_jobs", "result_ttl_seconds", "max_disk_bytes")
    MAX_QUEUED_JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_JOBS_FIELD_NUMBER: _ClassVar[int]
    RESULT_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_queued_jobs: int
    max_concurrent_jobs: int
    result_ttl_seconds: float
    max_disk_bytes: int
    def __init__(self, max_queued_jobs: _Optional[int] = ..., max_concurrent_jobs: _Optional[int] = ..., result_ttl_seconds: _Optional[float] = ..., max_disk_bytes: _Optional[int] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("input_spec", "search_space", "limits", "archadapt_version", "checkpoint_id", "device", "torch_version", "onnxruntime_version", "default_inner_steps", "default_finetune_steps", "job_limits", "default_genotype_samples")
    INPUT_SPEC_FIELD_NUMBER: _ClassVar[int]
    SEARCH_SPACE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ARCHADAPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_INNER_STEPS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FINETUNE_STEPS_FIELD_NUMBER: _ClassVar[int]
    JOB_LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_GENOTYPE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    input_spec: InputSpec
    search_space: SearchSpace
    limits: RequestLimits
    archadapt_version: str
    checkpoint_id: str
    device: str
    torch_version: str
    onnxruntime_version: str
    default_inner_steps: int
    default_finetune_steps: int
    job_limits: JobLimits
    default_genotype_samples: int
    def __init__(self, input_spec: _Optional[_Union[InputSpec, _Mapping]] = ..., search_space: _Optional[_Union[SearchSpace, _Mapping]] = ..., limits: _Optional[_Union[RequestLimits, _Mapping]] = ..., archadapt_version: _Optional[str] = ..., checkpoint_id: _Optional[str] = ..., device: _Optional[str] = ..., torch_version: _Optional[str] = ..., onnxruntime_version: _Optional[str] = ..., default_inner_steps: _Optional[int] = ..., default_finetune_steps: _Optional[int] = ..., job_limits: _Optional[_Union[JobLimits, _Mapping]] = ..., default_genotype_samples: _Optional[int] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("images", "labels", "class_names")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    labels: _containers.RepeatedScalarFieldContainer[int]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., labels: _Optional[_Iterable[int]] = ..., class_names: _Optional[_Iterable[str]] = ...) -> None: ...

class DatasetChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class DatasetInfo(_message.Message):
    __slots__ = ("dataset_id", "size_bytes", "images", "classes")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    size_bytes: int
    images: int
    classes: int
    def __init__(self, dataset_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., images: _Optional[int] = ..., classes: _Optional[int] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("dataset_id", "inline_dataset", "options", "idempotency_key", "deadline_seconds")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    INLINE_DATASET_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    inline_dataset: Dataset
    options: AdaptOptions
    idempotency_key: str
    deadline_seconds: float
    def __init__(self, dataset_id: _Optional[str] = ..., inline_dataset: _Optional[_Union[Dataset, _Mapping]] = ..., options: _Optional[_Union[AdaptOptions, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., deadline_seconds: _Optional[float] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "state", "dataset_id", "options", "idempotency_key", "created_time", "started_time", "finished_time", "expire_time", "attempts", "queue_position", "event_count", "error", "result", "deadline_time")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    STARTED_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISHED_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_TIME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    dataset_id: str
    options: AdaptOptions
    idempotency_key: str
    created_time: float
    started_time: float
    finished_time: float
    expire_time: float
    attempts: int
    queue_position: int
    event_count: int
    error: JobError
    result: AdaptResult
    deadline_time: float
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., dataset_id: _Optional[str] = ..., options: _Optional[_Union[AdaptOptions, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., created_time: _Optional[float] = ..., started_time: _Optional[float] = ..., finished_time: _Optional[float] = ..., expire_time: _Optional[float] = ..., attempts: _Optional[int] = ..., queue_position: _Optional[int] = ..., event_count: _Optional[int] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., result: _Optional[_Union[AdaptResult, _Mapping]] = ..., deadline_time: _Optional[float] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "from_index")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_INDEX_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    from_index: int
    def __init__(self, job_id: _Optional[str] = ..., from_index: _Optional[int] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("index", "time", "state_change", "progress")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    index: int
    time: float
    state_change: JobStateChange
    progress: Progress
    def __init__(self, index: _Optional[int] = ..., time: _Optional[float] = ..., state_change: _Optional[_Union[JobStateChange, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ...) -> None: ...

class JobStateChange(_message.Message):
    __slots__ = ("state", "reason", "error")
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    reason: str
    error: JobError
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., reason: _Optional[str] = ..., error: _Optional[_Union[JobError, _Mapping]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "states")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[JobState]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[_Union[JobState, str]]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DownloadModelRequest(_message.Message):
    __slots__ = ("job_id", "offset")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    offset: int
    def __init__(self, job_id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...
