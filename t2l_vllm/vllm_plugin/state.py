"""What one API server holds while the plugin serves: its link to the adapter service and vLLM's registry."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ..metrics import RequestMetrics
from ..service.link import ServiceLink
from ..service.settings import ServiceSettings
from .lora_registry import ServedLoRAs


@dataclass
class T2LState:
    """Per-app state of the plugin, on `app.state.t2l`."""

    adapters: ServiceLink
    settings: ServiceSettings
    loras: ServedLoRAs
    metrics: RequestMetrics
    models: Any  # vLLM's OpenAIServingModels
    routed: bool  # the deployment has a router
    stopping: threading.Event  # set when vLLM begins shutting this API server's engine client down
