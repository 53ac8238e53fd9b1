"""A small real filesystem that tests can fill: a tmpfs of a given size, mounted and unmounted here.

A full disk cannot be faked honestly (the error must come from the kernel, at
whatever write hits it), so tests that need one mount a tmpfs a few hundred KiB
large and fill it with a ballast file. Mounting needs root (or CAP_SYS_ADMIN);
where it is not permitted the tests skip with that reason.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path


class MountNotPermitted(RuntimeError):
    """This process may not mount a filesystem (not root, or a container without CAP_SYS_ADMIN)."""


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size_kib: int) -> Iterator[Path]:
    """`folder` as a fresh tmpfs of `size_kib` KiB (mode 0700) for the duration; raises `MountNotPermitted`."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise MountNotPermitted(f"`mount -t tmpfs` failed: {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path, name: str = "ballast") -> Path:
    """Writes a file in `folder` until its filesystem is full; delete it to give the space back."""
    ballast = folder / name
    chunk = b"\0" * 4096
    with open(ballast, "wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
    return ballast
