"""The `t2l:<description>` and `t2l/<task>` model names as a vLLM LoRA resolver, for the routes the plugin does not wrap.

The endpoint plugin reads those names itself on the generation routes
(`request_task.py`). vLLM's other routes that take a model (Anthropic's
/v1/messages, /tokenize, pooling) resolve a name they do not know through LoRA
resolvers (`vllm/lora/resolver.py`), when `VLLM_ALLOW_RUNTIME_LORA_UPDATING` is
set: so does a plain `vllm serve` with this plugin. vLLM keeps every resolved
request in `OpenAIServingModels.lora_requests` for good; this resolver keeps
that bounded: it holds a lease on the adapter of each name it resolved, at most
the adapter cache's `max_entries` names, and when it lets the oldest go it
takes the name out of vLLM's registry too, but never while vLLM is handling a
request that names it (vLLM looks a name up more than once per request, and
enters it only after `resolve_lora` has returned and its engine has loaded the
adapter): such a name goes once the last of those requests has been handled
(`handling`, around vLLM's handler in `routes._refusing_endpoint`). Those
requests hold leases of their own there: the resolver's window bounds vLLM's
registry, not how long a request may use its adapter.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

from ..cache import Lease
from ..descriptions import CATALOG_PREFIX, DESCRIPTION_MODEL_PREFIX
from ..errors import T2LError
from .configured import PLUGIN_NAME
from .request_task import RequestTaskError, task_of
from .routes import lease_for  # the generation routes' own leasing

if TYPE_CHECKING:
    from .state import T2LState

logger = logging.getLogger(__name__)

MAX_UNSETTLED = 4096  # names let go while in use or before vLLM entered them; one whose loading failed never is


class T2LResolver(LoRAResolver):
    """Resolves t2l model names once the endpoint plugin has attached its state (`attach`); None before."""

    def __init__(self) -> None:
        self._t2l: T2LState | None = None
        self._leases: OrderedDict[str, Lease] = OrderedDict()  # resolved name -> the lease keeping its adapter
        self._unsettled: OrderedDict[str, None] = OrderedDict()  # let go, still to be taken out of vLLM's registry
        self._in_use: Counter[str] = Counter()  # names of the requests vLLM is handling on the resolving routes

    def attach(self, t2l: T2LState) -> None:
        self._t2l = t2l

    def __len__(self) -> int:
        return len(self._leases)

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        t2l = self._t2l
        if t2l is None or not lora_name.startswith((DESCRIPTION_MODEL_PREFIX, CATALOG_PREFIX)):
            return None
        try:
            task = task_of({"model": lora_name}, {}, t2l.adapters.catalog, t2l.settings.generator.max_description_chars)
            lease, _ = await lease_for(t2l, task)
        except (RequestTaskError, T2LError) as err:
            logger.info("t2l_vllm: cannot resolve the model `%s`: %s", lora_name[:80], err)
            return None  # vLLM answers that the model does not exist
        assert lease is not None
        self._keep(lora_name, lease)
        return LoRARequest(lora_name=lora_name, lora_int_id=lease.stored.int_id, lora_path=str(lease.stored.path))

    @contextlib.contextmanager
    def handling(self, name: str) -> Iterator[None]:
        """While vLLM handles a request naming `name`: the name stays in vLLM's registry."""
        self._in_use[name] += 1
        try:
            yield
        finally:
            self._in_use[name] -= 1
            if not self._in_use[name]:
                del self._in_use[name]
            self.settle()

    def settle(self) -> None:
        """Takes out of vLLM's registry the names let go that no request uses any more (and vLLM has entered)."""
        if self._t2l is None:
            return
        for name in list(self._unsettled):
            if name in self._leases:  # resolved and kept again since
                del self._unsettled[name]
            elif name not in self._in_use and name in self._t2l.loras:
                self._t2l.loras.discard(name)
                del self._unsettled[name]

    def _keep(self, name: str, lease: Lease) -> None:
        assert self._t2l is not None
        self.settle()
        old = self._leases.pop(name, None)
        if old is not None:
            old.release()
        self._leases[name] = lease
        while len(self._leases) > self._t2l.settings.cache.max_entries:
            oldest, kept = self._leases.popitem(last=False)
            if oldest in self._t2l.loras and oldest not in self._in_use:
                self._t2l.loras.discard(oldest)  # vLLM would keep it for good
            else:  # in use, or not yet entered (vLLM enters it once its engine has loaded the adapter)
                self._unsettled[oldest] = None
                while len(self._unsettled) > MAX_UNSETTLED:
                    self._unsettled.popitem(last=False)
            kept.release()


def register_resolver() -> None:
    """Registers the resolver with vLLM once per process (general plugin); a cheap, empty object until attached."""
    if PLUGIN_NAME not in LoRAResolverRegistry.get_supported_resolvers():
        LoRAResolverRegistry.register_resolver(PLUGIN_NAME, T2LResolver())


def handling(name: str) -> contextlib.AbstractContextManager[None]:
    """Around vLLM's handler of a request whose `model` is a task name: this process's resolver keeps the name in
    vLLM's registry meanwhile (`T2LResolver.handling`); a no-op where no resolver is registered."""
    if PLUGIN_NAME not in LoRAResolverRegistry.get_supported_resolvers():
        return contextlib.nullcontext()
    resolver: Any = LoRAResolverRegistry.get_resolver(PLUGIN_NAME)
    return resolver.handling(name)


def attach_resolver(t2l: T2LState) -> T2LResolver | None:
    """Hands the API server's state to this process's resolver (the endpoint plugin, at init)."""
    if PLUGIN_NAME not in LoRAResolverRegistry.get_supported_resolvers():
        return None
    resolver: Any = LoRAResolverRegistry.get_resolver(PLUGIN_NAME)
    resolver.attach(t2l)
    return resolver
