"""The lock files beside a service's socket: who may start a service, and whether one still runs.

`socket_lock` serialises starting, connecting and stopping, so two API servers
starting together get one service and no client connects to a service that has
decided to stop; the `.alive` lock is held by a running service and dropped by
the kernel however it ends, so anyone can wait for its clean-up.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


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
