"""PEFT folders for vLLM to load, one per adapter name, under a private root.

vLLM loads LoRA weights from a folder path, and may reload an evicted adapter from
that path at any later time; if the folder is gone then, its engine dies. So the
store writes each folder atomically, never rewrites a name with other content (names
are content hashes), and removes a folder only when its owner says no request can
still reach it. The root defaults to tmpfs (/dev/shm) where available.

The store belongs to a deployment, not to the process that writes it: its root is
named by the deployment and by the process that owns the deployment (an API server,
the offline engine). An adapter service that dies leaves its folders to the next
one, which adopts them (`adopted`), so a folder vLLM may still load outlives the
service that wrote it; folders whose owning process has ended are swept.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .adapters import LoRAAdapter
from .descriptions import GENERATED_NAME, adapter_int_id, adapter_name
from .errors import AdapterStoreError, T2LError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredAdapter:
    """Where vLLM finds an adapter, and the integer id it is known by in the engine."""

    name: str
    path: Path
    int_id: int
    nbytes: int


_PREFIX = "t2l_vllm-adapters-"


class AdapterIdCollisionError(T2LError):
    """Two adapter names whose content-derived integer ids coincide (2**-60 per pair)."""


def sweep_orphans(parent: Path) -> list[Path]:
    """Removes store folders left by deployments whose owner no longer exists (a SIGKILL skips clean-up).

    A store folder is named after its owner's process id; a folder whose owner is
    alive, or whose id was reused by a live process, is left alone.
    """
    removed = []
    for folder in parent.glob(f"{_PREFIX}*-*"):
        pid = folder.name[len(_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        logger.info("removed %d adapter folders left by ended processes under %s", len(removed), parent)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def deployment_root(root: str | Path | None, deployment: str, owner_pid: int) -> Path:
    """The folder a deployment's adapters live in, under `root` (default: /dev/shm)."""
    parent = Path(root) if root is not None else default_store_parent()
    return parent / f"{_PREFIX}{owner_pid}-{hashlib.sha256(deployment.encode()).hexdigest()[:16]}"


def remove_deployment_store(root: str | Path | None, deployment: str, owner_pid: int) -> None:
    """Removes a deployment's adapter folder: for its owner, once no service and no engine of it runs (a
    service that stopped cleanly has removed it already; one given up has not)."""
    shutil.rmtree(deployment_root(root, deployment, owner_pid), ignore_errors=True)


def default_store_parent() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


class AdapterStore:
    """Writes and removes adapter folders; thread-safe.

    An adapter's integer id is derived from its name (`adapter_int_id`), so every
    process agrees on it. vLLM keys its LoRA slots and caches by that id, so two
    stored adapters must never share one: the second is refused with
    `AdapterIdCollisionError` instead of being served the first one's weights.
    """

    def __init__(self, root: str | Path | None = None, deployment: str | None = None, owner_pid: int | None = None) -> None:
        """A private folder inside `root` (default: /dev/shm): two servers sharing a directory must never
        delete each other's adapters, whose names coincide. With `deployment` the folder is the
        deployment's, named by it and by `owner_pid` (default: this process), and what an earlier
        service of the deployment stored there is adopted; without, a new folder for this process."""
        parent = Path(root) if root is not None else default_store_parent()
        parent.mkdir(parents=True, exist_ok=True)
        sweep_orphans(parent)
        owner = os.getpid() if owner_pid is None else owner_pid
        self._stored: dict[str, StoredAdapter] = {}
        self._names_by_id: dict[int, str] = {}
        self._lock = threading.Lock()
        if deployment is None:
            self.root = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{owner}-", dir=parent))
            self.adopted: list[StoredAdapter] = []
            return
        self.root = deployment_root(parent, deployment, owner)
        self.root.mkdir(mode=0o700, exist_ok=True)
        self.adopted = self._adopt()

    def _adopt(self) -> list[StoredAdapter]:
        """Takes over the folders an earlier service of this deployment stored (half-written ones go)."""
        adopted = []
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith("."):
                shutil.rmtree(folder, ignore_errors=True)
                continue
            if not folder.is_dir() or not GENERATED_NAME.match(folder.name):
                continue
            nbytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            stored = StoredAdapter(folder.name, folder, adapter_int_id(folder.name), nbytes)
            self._stored[stored.name] = stored
            self._names_by_id[stored.int_id] = stored.name
            adopted.append(stored)
        if adopted:
            logger.info("adopted %d adapter folders an earlier adapter service left in %s", len(adopted), self.root)
        return adopted

    def __len__(self) -> int:
        return len(self._stored)

    def get(self, name: str) -> StoredAdapter | None:
        with self._lock:
            return self._stored.get(name)

    def put(self, adapter: LoRAAdapter) -> StoredAdapter:
        """Writes the adapter's folder unless it is already stored; returns where it is.

        Raises `AdapterStoreError` when the filesystem refuses the write (full, read-only):
        nothing of the half-written folder is left, and folders already stored are untouched.
        """
        return self._store(adapter.name, adapter.nbytes, adapter.save_peft)

    def put_folder(self, folder: str | Path) -> StoredAdapter:
        """Copies a trained PEFT adapter's folder in, named by the sha256 of its files, so it is
        delivered, counted and removed like a generated one and the user's folder is never touched."""
        folder = Path(folder)
        digest = hashlib.sha256(b"peft-folder\0")
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        for path in files:
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
        nbytes = sum(p.stat().st_size for p in files)
        return self._store(adapter_name(digest.hexdigest()), nbytes, lambda tmp: shutil.copytree(folder, tmp, dirs_exist_ok=True))

    def _store(self, name: str, nbytes: int, write: Callable[[Path], object]) -> StoredAdapter:
        """The one way a folder enters the store: `write` fills a private temporary folder, which is
        renamed into place under the lock unless another thread stored the name meanwhile."""
        int_id = adapter_int_id(name)
        with self._lock:
            stored = self._stored.get(name)
            if stored is not None:
                return stored
            self._check_id_is_free(int_id, name)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.root))
            try:
                write(tmp)
                with self._lock:
                    stored = self._stored.get(name)
                    if stored is not None:  # another thread stored it meanwhile
                        return stored
                    self._check_id_is_free(int_id, name)
                    os.rename(tmp, self.root / name)
                    stored = StoredAdapter(name, self.root / name, int_id, nbytes)
                    self._stored[name] = stored
                    self._names_by_id[int_id] = name
                    return stored
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as err:
            raise self._write_error(err) from err

    def _write_error(self, err: OSError) -> AdapterStoreError:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            return AdapterStoreError(
                f"the disk holding the adapter folders ({self.root.parent}) is full, so no new adapter can be made "
                "now; adapters already made keep serving. Free space there, or give `--adapter-dir` a larger filesystem."
            )
        return AdapterStoreError(f"could not write an adapter folder under {self.root}: {err.strerror or err}; check `--adapter-dir`.")

    def remove(self, name: str) -> None:
        """Deletes a folder. Call only when no queued or running request can load it."""
        with self._lock:
            stored = self._stored.pop(name, None)
            if stored is not None:
                del self._names_by_id[stored.int_id]
        if stored is not None:
            shutil.rmtree(stored.path, ignore_errors=True)

    def close(self) -> None:
        """Removes every folder and the store's own root."""
        with self._lock:
            self._stored.clear()
            self._names_by_id.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def _check_id_is_free(self, int_id: int, name: str) -> None:
        holder = self._names_by_id.get(int_id)
        if holder is not None and holder != name:
            raise AdapterIdCollisionError(
                f"adapter `{name}` has the integer id {int_id}, which the stored adapter `{holder}` already has; "
                "it is refused so that vLLM never serves one's weights for the other. Retry once that adapter is evicted."
            )
