"""Exception types of the core package.

The server maps each type to a gRPC status code in one place.
"""


class ArchadaptError(Exception):
    """Base class of every error the core package raises on purpose."""


class ConfigError(ArchadaptError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class CheckpointError(ArchadaptError):
    """A checkpoint is missing, incomplete or does not match its manifest."""


class DatasetError(ArchadaptError, ValueError):
    """A user's dataset is invalid.

    `field` names the offending request field (for example `images[3]`), `value` shows the bad
    value and `allowed` states what would be accepted.
    """

    def __init__(self, field: str, value: object, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {field}: {value}; {allowed}")


class AdaptationCancelled(ArchadaptError):
    """The caller cancelled an adaptation between two steps."""


class ExportError(ArchadaptError):
    """The exported ONNX model does not match the PyTorch network."""


class BudgetError(ArchadaptError, ValueError):
    """No genotype of the search space fits a request's parameter or multiply-accumulate budget.

    `violations` lists (option name, description) pairs, one per limit that no network meets.
    """

    def __init__(self, violations: list[tuple[str, str]]):
        self.violations = violations
        super().__init__("; ".join(description for _, description in violations))
