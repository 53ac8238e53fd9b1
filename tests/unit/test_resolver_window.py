"""The LoRA resolver's window over vLLM's registry, without a server: bounded, and never taking out a name that
vLLM is still handling a request for or has not entered yet (the orders an end-to-end burst meets only by chance)."""

from __future__ import annotations

from types import SimpleNamespace

from t2l_vllm.vllm_plugin.resolver import T2LResolver

WINDOW = 2


class Registry(dict):
    """Stands in for `ServedLoRAs` over vLLM's `lora_requests`: what the resolver reads and takes out."""

    def discard(self, name: str) -> None:
        self.pop(name, None)


def resolver_with_registry() -> tuple[T2LResolver, Registry, list[str]]:
    registry, released = Registry(), []
    resolver = T2LResolver()
    resolver.attach(SimpleNamespace(settings=SimpleNamespace(cache=SimpleNamespace(max_entries=WINDOW)), loras=registry))
    return resolver, registry, released


def resolve(resolver: T2LResolver, registry: Registry, released: list[str], name: str, entered: bool = True) -> None:
    """What `resolve_lora` does once it has its lease, then what vLLM does after it returns (enters the name)."""
    resolver._keep(name, SimpleNamespace(release=lambda: released.append(name)))
    if entered:
        registry[name] = object()


def test_the_window_keeps_the_newest_names_and_lets_the_oldest_go_from_vllms_registry():
    resolver, registry, released = resolver_with_registry()
    for name in ("t2l:a", "t2l:b", "t2l:c", "t2l:d"):
        resolve(resolver, registry, released, name)
    assert set(registry) == {"t2l:c", "t2l:d"} and released == ["t2l:a", "t2l:b"] and len(resolver) == WINDOW
    resolve(resolver, registry, released, "t2l:c")  # resolved again: its old lease goes, the name stays
    assert set(registry) == {"t2l:c", "t2l:d"} and released[-1] == "t2l:c"


def test_a_name_let_go_before_vllm_entered_it_goes_once_entered():
    resolver, registry, released = resolver_with_registry()
    resolve(resolver, registry, released, "t2l:slow", entered=False)  # vLLM's engine still loading it
    resolve(resolver, registry, released, "t2l:b")
    resolve(resolver, registry, released, "t2l:c")
    assert released == ["t2l:slow"] and "t2l:slow" not in registry
    registry["t2l:slow"] = object()  # vLLM enters it now: it would stay for good
    with resolver.handling("t2l:slow"):
        pass  # its request has been handled
    assert set(registry) == {"t2l:b", "t2l:c"}


def test_a_name_stays_in_vllms_registry_while_a_request_for_it_is_handled():
    resolver, registry, released = resolver_with_registry()
    with resolver.handling("t2l:a"):
        resolve(resolver, registry, released, "t2l:a")
        resolve(resolver, registry, released, "t2l:b")
        resolve(resolver, registry, released, "t2l:c")
        assert "t2l:a" in registry and released == ["t2l:a"]  # vLLM may look it up again before it answers
        with resolver.handling("t2l:a"):  # a second request for it
            pass
        assert "t2l:a" in registry
    assert set(registry) == {"t2l:b", "t2l:c"}


def test_a_name_let_go_and_resolved_again_is_not_taken_out():
    resolver, registry, released = resolver_with_registry()
    resolve(resolver, registry, released, "t2l:a", entered=False)
    resolve(resolver, registry, released, "t2l:b")
    resolve(resolver, registry, released, "t2l:c")  # a let go, not entered
    resolve(resolver, registry, released, "t2l:a")  # resolved again, entered this time
    with resolver.handling("t2l:other"):
        pass
    assert set(registry) == {"t2l:c", "t2l:a"}
