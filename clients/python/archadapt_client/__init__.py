"""Python client of the archadapt gRPC server.

Example:
    >>> from archadapt_client import Client, load_dataset
    >>> dataset = load_dataset("flowers/")  # one sub-folder per class
    >>> with Client("localhost:50051") as client:
    ...     result = client.adapt(dataset.images, dataset.labels, dataset.class_names)
    >>> result.save("flowers.onnx")
"""

from archadapt_client.client import (
    AdaptResult,
    Client,
    EdgeProbabilities,
    Metrics,
    ProgressUpdate,
    RankedGenotype,
    RetryPolicy,
    ServerInfo,
)
from archadapt_client.errors import ArchadaptError
from archadapt_client.loaders import Dataset, DatasetError, from_arrays, load_dataset, load_idx

__version__ = "0.1.0"

__all__ = [
    "AdaptResult",
    "ArchadaptError",
    "Client",
    "Dataset",
    "DatasetError",
    "EdgeProbabilities",
    "Metrics",
    "ProgressUpdate",
    "RankedGenotype",
    "RetryPolicy",
    "ServerInfo",
    "__version__",
    "from_arrays",
    "load_dataset",
    "load_idx",
]
