"""The one exception family of t2l_vllm.

Every error a user can cause (a bad description, a checkpoint that does not fit,
a generated adapter that fails its checks) is a `T2LError`, so that the CLI and the
server can answer it with its message instead of a traceback.
"""


class T2LError(Exception):
    """Base class: a problem the caller can fix, with a message that says how."""


class InvalidDescriptionError(T2LError, ValueError):
    """A task description that is empty, too long or not a string."""


class CheckpointError(T2LError):
    """A hypernetwork checkpoint that is missing, corrupt or inconsistent."""


class ShapeMismatchError(T2LError):
    """A hypernetwork or adapter whose shapes do not fit the base model."""


class AdapterCheckError(T2LError):
    """A generated adapter refused by the weight checks (non-finite, norm too large)."""


class ConfigError(T2LError, ValueError):
    """A setting with a value that cannot work."""


class GenerationError(T2LError):
    """A hypernetwork pass that failed (a bug, or the device out of memory): every description in it fails."""


class AdapterStoreError(T2LError):
    """An adapter folder that could not be written (the filesystem of `--adapter-dir` full or failing)."""


class EngineDiedError(T2LError):
    """vLLM's engine stopped on its own while the server was serving: the server ends with a failure status."""
