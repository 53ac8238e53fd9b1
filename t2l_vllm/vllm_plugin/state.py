"""What one API server holds while the plugin serves: its client of the adapter service and vLLM's registry."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ..metrics import RequestMetrics
from ..service.client import AdapterClient
from .lora_registry import ServedLoRAs


@dataclass
class T2LState:
    """Per-app state of the plugin, on `app.state.t2l`."""

    adapters: AdapterClient
    loras: ServedLoRAs
    metrics: RequestMetrics
    models: Any  # vLLM's OpenAIServingModels
    routed: bool  # the deployment has a router
    stopping: threading.Event  # set when vLLM begins shutting this API server's engine client down
