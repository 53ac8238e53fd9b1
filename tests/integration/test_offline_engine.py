"""The offline engine is the server without HTTP: same service, leases, names and bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.engine


def store_folders(engine) -> int:
    return sum(1 for p in Path(engine.adapters.link.hello.store).iterdir() if not p.name.startswith("."))


def test_500_distinct_descriptions_keep_the_folders_within_the_cache_bound(engine):
    from vllm import SamplingParams

    cache = engine.settings.cache.max_entries
    params = SamplingParams(temperature=0.0, max_tokens=1)
    most, answered = 0, 0
    for start in range(0, 500, 25):  # 20 calls of 25 new descriptions, each more than the cache holds
        descriptions = [f"Offline bound task {i}: tag the nouns." for i in range(start, start + 25)]
        outputs = engine.generate(["pear apple"] * len(descriptions), descriptions, params)
        answered += sum(1 for o in outputs if o.lora_request is not None)
        most = max(most, store_folders(engine))
    assert answered == 500
    # resident adapters, and evicted ones waiting out the removal grace (at most as many again)
    assert most <= 2 * cache, most


def test_adapter_names_and_ids_are_the_ones_every_server_computes(engine, generator):
    from t2l_vllm.descriptions import adapter_int_id
    from t2l_vllm.vllm_plugin.offline import greedy

    description = "Convert the text to uppercase."
    output = engine.chat([[{"role": "user", "content": "hi"}]], [description], greedy(2))[0]
    assert output.lora_request.lora_name == generator.name_for(description)
    assert output.lora_request.lora_int_id == adapter_int_id(output.lora_request.lora_name)


def test_a_bad_description_is_refused_and_the_engine_keeps_serving(engine):
    from t2l_vllm.errors import InvalidDescriptionError
    from t2l_vllm.vllm_plugin.offline import greedy

    with pytest.raises(InvalidDescriptionError, match="empty"):
        engine.generate(["pear apple", "pear apple"], ["Sort the words alphabetically.", "   "], greedy(4))
    assert engine.generate(["pear apple"], ["Sort the words alphabetically."], greedy(4))[0].outputs[0].text


def test_an_engine_whose_service_died_starts_it_again_on_the_next_call(engine):
    """SIGKILL of the offline engine's adapter service: the next call waits for a new one (bounded), and
    answers as before; the folders the dead service left are the engine's, adopted by the new one."""
    import os
    import signal

    from t2l_vllm.vllm_plugin.offline import greedy

    description = "Reverse the letters of every word."
    before = engine.generate(["pear apple"], [description], greedy(6))[0].outputs[0].text
    dead = engine.adapters.link.hello.pid
    store = engine.adapters.link.hello.store
    os.kill(dead, signal.SIGKILL)
    after = engine.generate(["pear apple"], [description], greedy(6))[0]
    assert after.outputs[0].text == before
    assert engine.adapters.link.hello.pid != dead and engine.adapters.link.hello.store == store
    assert engine.adapters.link.status == "up"
