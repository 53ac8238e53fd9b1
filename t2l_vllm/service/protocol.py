"""The adapter service's wire format: one JSON object per line over a Unix socket.

Requests carry an `op` and (except `release`) an `id` that the reply repeats:

    {"op": "acquire", "id": 1, "description": "..."}  -> {"id": 1, "ok": {adapter..., "lease": 7}}
    {"op": "lease", "id": 2, "name": "t2l-..."}        -> {"id": 2, "ok": {adapter..., "lease": 8} | null}
    {"op": "route", "id": 3, "query": "..."}           -> {"id": 3, "ok": {"task", "description", "score", "label"}}
    {"op": "report", "id": 4, "description": "...", "nearest": 5}
                                                       -> {"id": 4, "ok": {"name", "generated", "milliseconds", "nearest_tasks"}}
    {"op": "release", "lease": 7}                      (no reply)
    any request                                        -> {"id": n, "error": {"type": "InvalidDescriptionError", "message": "..."}}

The service speaks first ({"op": "hello", ...}: the hypernetwork it serves and
where its metrics are) and tells every client when an adapter's folder is gone
({"op": "removed", "name": ...}), so that API servers can forget the name.
Errors travel by class name and come back as the same `T2LError` subclass.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ..adapter_store import AdapterIdCollisionError
from ..errors import AdapterCheckError, AdapterStoreError, ConfigError, GenerationError, InvalidDescriptionError, T2LError

# Descriptions are bounded by the generator's settings; this only bounds a line.
MAX_LINE_BYTES = 16 * 2**20

_ERRORS: dict[str, type[T2LError]] = {
    cls.__name__: cls
    for cls in (T2LError, InvalidDescriptionError, AdapterCheckError, AdapterIdCollisionError, ConfigError, GenerationError, AdapterStoreError)
}


class AdapterServiceError(T2LError):
    """The adapter service is unreachable, failed to start, or went away."""


def encode(message: dict[str, Any]) -> bytes:
    # ASCII escapes carry any Python str, lone surrogates from a JSON body included, unchanged.
    return json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at end of stream."""
    line = await reader.readline()
    if not line:
        return None
    return json.loads(line)


def error_body(err: T2LError) -> dict[str, str]:
    name = type(err).__name__ if type(err).__name__ in _ERRORS else T2LError.__name__
    return {"type": name, "message": str(err)}


def error_from(body: dict[str, str]) -> T2LError:
    return _ERRORS.get(body.get("type", ""), T2LError)(body.get("message", "the adapter service failed."))


def alive_lock_path(socket_path: str) -> str:
    """A file the service holds an exclusive lock on for as long as it runs.

    The kernel drops the lock when the process ends, however it ends, so a
    client can wait for a service's clean-up without being its parent.
    """
    return f"{socket_path}.alive"


def lock_file(path: str, operation: int = fcntl.LOCK_EX) -> IO[str]:
    """Opens `path` (creating it) and locks it; the caller closes the file to unlock.

    Lock files are removed by their holder when its service stops, so a process
    that waited on a file and got the lock after it was removed holds a lock on
    nothing: it checks that the path still names the file it locked, and if not,
    locks the path's new file instead. That way the files can be deleted and two
    processes never both believe they hold one lock.
    """
    while True:
        handle = open(path, "a")  # noqa: SIM115 - returned to the caller
        try:
            fcntl.flock(handle, operation)
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                return handle
        except FileNotFoundError:
            pass  # removed between our open and our lock: try the new one
        except BaseException:
            handle.close()
            raise
        handle.close()


@contextmanager
def socket_lock(socket_path: str) -> Iterator[None]:
    """The lock under which clients start and connect to a service, and under which it decides to stop.

    A client holds it until the service has greeted it, so a service holding it
    sees every client that is connecting; two clients starting together get one
    service, and none connects to a service that has decided to stop.
    """
    with lock_file(f"{socket_path}.lock"):
        yield


def remove_socket_lock(socket_path: str) -> None:
    """Removes the file behind `socket_lock`; call while holding it (see `lock_file`)."""
    Path(f"{socket_path}.lock").unlink(missing_ok=True)
