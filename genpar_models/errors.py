"""Exception types users see. Each message names the file, row or field and what was expected."""


class GenparError(Exception):
    """Base class of genpar's own errors."""


class ConfigError(GenparError, ValueError):
    """A config file or override is invalid."""


class DataError(GenparError, ValueError):
    """Input data is unreadable or invalid (names the file, row or sample)."""


class ShardError(GenparError, ValueError):
    """A shard set or its manifest fails verification (names the file)."""


class CheckpointError(GenparError, ValueError):
    """A checkpoint is missing, corrupt, or belongs to another model or config."""


class StorageError(GenparError, OSError):
    """A write failed for lack of space or quota; names the file being written."""
