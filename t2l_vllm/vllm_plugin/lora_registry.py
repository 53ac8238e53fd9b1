"""The one module that builds vLLM `LoRARequest`s and writes vLLM's registry of served LoRAs.

vLLM keys a LoRA's slots and caches by its integer id and resolves a request's
`model` through `OpenAIServingModels.lora_requests` (name -> LoRARequest, the
public registry that `--lora-modules` fills). Generated adapters are entered
there by name while a request holds them and forgotten when the adapter service
removes their folder. `tests/integration/test_vllm_contract.py` checks the parts
of vLLM this relies on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..adapter_store import AdapterIdCollisionError, StoredAdapter


def lora_request(stored: StoredAdapter) -> Any:
    """The `vllm.lora.request.LoRARequest` that makes vLLM load a stored adapter."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=stored.name, lora_int_id=stored.int_id, lora_path=str(stored.path))


class ServedLoRAs:
    """Generated adapters in one API server's registry of LoRAs (beside `--lora-modules` ones)."""

    def __init__(self, serving_models: Any) -> None:
        self._registry: dict[str, Any] = serving_models.lora_requests

    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def add(self, stored: StoredAdapter) -> None:
        """Makes vLLM's handlers resolve the adapter's name; refuses an id another name has."""
        if stored.name in self._registry:
            return
        for other in self._registry.values():
            if other.lora_int_id == stored.int_id:
                raise AdapterIdCollisionError(
                    f"adapter `{stored.name}` has the integer id {stored.int_id}, which the served LoRA "
                    f"`{other.lora_name}` already has; refused so that vLLM never serves one's weights for the other."
                )
        self._registry[stored.name] = lora_request(stored)

    def discard(self, name: str) -> None:
        self._registry.pop(name, None)

    def stored(self, name: str) -> StoredAdapter | None:
        """A generated adapter vLLM knows by name, as stored (its size is not known here)."""
        request = self._registry.get(name)
        if request is None or not request.lora_path:
            return None
        return StoredAdapter(request.lora_name, Path(request.lora_path), request.lora_int_id, 0)
