"""Which encoder weights a hypernetwork reads: a model name, and the sha256 of its weight files.

A hypernetwork is trained on one encoder's vectors; any other weights give it
inputs it never saw. The name alone says which published model that was; the
hash (`EncoderSettings.weights_sha256`) says which bytes, so that the same
encoder can be loaded from a local folder (a cluster without hub access) and a
folder holding other weights is refused. For a model kept in one file the hash
is that file's sha256, the figure the Hugging Face hub lists for it (and
`sha256sum` prints); for sharded weights it is the sha256 of the shards' names
and hashes, one `NAME SHA256` line each, in name order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import ConfigError

# The files transformers loads weights from, in the order it prefers them.
_SINGLE = ("model.safetensors", "pytorch_model.bin")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_CHUNK = 1 << 24


def weight_files(folder: str | Path) -> list[Path]:
    """The files a model folder keeps its weights in (the shards of an index, or the one file)."""
    folder = Path(folder)
    for index in _INDEXES:
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            return [folder / shard for shard in shards]
    for name in _SINGLE:
        if (folder / name).is_file():
            return [folder / name]
    raise ConfigError(f"encoder folder `{folder}` holds no weights ({', '.join(_SINGLE)} or a sharded index).")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(folder: str | Path) -> str:
    """The identity hash of a model folder's weights (see the module docstring)."""
    files = weight_files(folder)
    if len(files) == 1:
        return file_sha256(files[0])
    lines = "".join(f"{f.name} {file_sha256(f)}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def cached_snapshot(repo_id: str) -> Path | None:
    """The Hugging Face cache's folder of a hub model, if it has been downloaded; None otherwise."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        return None


def check_weights_identity(name: str, recorded: str, folder: Path | None, substitute: bool) -> None:
    """Raises `ConfigError` unless `folder` holds the weights whose hash the hypernetwork recorded.

    `substitute`: the folder was given in place of `name` (`--encoder-path`).
    With no hash recorded the checkpoint names its encoder by `name` only: a load
    by that name satisfies it, and a substitute folder cannot be shown to be that
    encoder, so it is refused.
    """
    if not recorded:
        if substitute:
            raise ConfigError(
                f"the hypernetwork names its encoder `{name}` but records no hash of its weights, so the folder "
                f"`{folder}` cannot be checked to hold them. Load it by name (a copy of the Hugging Face cache with "
                "HF_HUB_OFFLINE=1 works without hub access), or import the checkpoint again with `--encoder-path DIR`, "
                "which records the hash."
            )
        return
    if folder is None:
        raise ConfigError(f"cannot find the files of encoder `{name}` to check the hash the hypernetwork records for it.")
    actual = weights_sha256(folder)
    if actual != recorded:
        raise ConfigError(
            f"the encoder weights in `{folder}` (sha256 {actual[:16]}...) are not the `{name}` the hypernetwork was "
            f"trained with (sha256 {recorded[:16]}...): give the folder that holds those weights."
        )
