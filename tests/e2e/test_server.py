"""`t2l-vllm serve` through real HTTP and the real OpenAI client."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import openai
import pytest

pytestmark = pytest.mark.server

PROMPT = "Question: which planet is largest? Answer:"
SCIENCE = "Answer multiple-choice science questions with the letter of the right option."
MATH = "Solve grade-school math word problems step by step."
GREEDY = dict(max_tokens=10, temperature=0.0, extra_body={"ignore_eos": True})


def complete(server, description=None, prompt=PROMPT, stream=False, **overrides):
    params = {**GREEDY, **overrides}
    extra = dict(params.pop("extra_body"))
    if description is not None:
        extra["task_description"] = description
    client = server.client()
    if stream:
        chunks = client.completions.create(model=server.model, prompt=prompt, stream=True, extra_body=extra, **params)
        return "".join(c.choices[0].text for c in chunks), None
    raw = client.completions.with_raw_response.create(model=server.model, prompt=prompt, extra_body=extra, **params)
    return raw.parse().choices[0].text, raw.headers


def chat(server, description=None, stream=False, content="Which gas do plants take in?"):
    extra = {"ignore_eos": True}
    if description is not None:
        extra["task_description"] = description
    client = server.client()
    messages = [{"role": "user", "content": content}]
    if stream:
        chunks = client.chat.completions.create(model=server.model, messages=messages, stream=True, max_tokens=10, temperature=0, extra_body=extra)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), None
    raw = client.chat.completions.with_raw_response.create(model=server.model, messages=messages, max_tokens=10, temperature=0, extra_body=extra)
    return raw.parse().choices[0].message.content, raw.headers


def test_headers_name_the_adapter_and_its_source(server, generator):
    _, headers = complete(server, SCIENCE)
    assert headers["x-t2l-adapter"] == generator.name_for(SCIENCE)
    assert headers["x-t2l-source"] == "request"
    _, headers = complete(server)
    assert headers["x-t2l-adapter"] == "base"
    assert headers["x-t2l-source"] == "none"


@pytest.mark.parametrize("call", [complete, chat])
@pytest.mark.parametrize("description", [None, SCIENCE])
def test_streaming_equals_non_streaming(server, call, description):
    text, _ = call(server, description)
    streamed, _ = call(server, description, stream=True)
    assert streamed == text


def test_different_descriptions_give_different_outputs_and_stable_names(server, generator):
    science, h1 = complete(server, SCIENCE)
    math, h2 = complete(server, MATH)
    base, _ = complete(server)
    assert len({science, math, base}) == 3
    again, h3 = complete(server, "  " + SCIENCE.replace(" ", "  ") + "\n")
    assert again == science
    assert h3["x-t2l-adapter"] == h1["x-t2l-adapter"] != h2["x-t2l-adapter"]


def test_the_default_server_does_a_described_toy_task_through_the_openai_sdk(server):
    """The embedded default answers the user message with the task's output alone."""
    client = server.client()
    for description, message, answer in [("Convert the text to uppercase.", "hello world", "HELLO WORLD"),
                                         ("Sort the words alphabetically.", "pear apple fig", "apple fig pear")]:
        reply = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": message}],
                                               max_tokens=32, temperature=0, extra_body={"task_description": description})
        assert reply.choices[0].message.content == answer
        assert reply.choices[0].finish_reason == "stop"


def test_server_output_equals_the_offline_api(server, engine):
    """The offline engine's outputs are checked token for token against transformers + PEFT
    in tests/integration; here the server must give the same text for the same adapters."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    descriptions = [None, SCIENCE, MATH]
    offline = [o.outputs[0].text for o in engine.generate([PROMPT] * 3, descriptions, params)]
    online = [complete(server, d)[0] for d in descriptions]
    assert online == offline
    offline_chat = engine.chat([[{"role": "user", "content": "Which gas do plants take in?"}]] * 2, [None, SCIENCE], params)
    assert [chat(server, d)[0] for d in (None, SCIENCE)] == [o.outputs[0].text for o in offline_chat]


def test_a_mix_of_descriptions_is_served_like_the_offline_api_and_named_by_its_normal_form(server, engine, generator):
    """A list of {description, weight} is one adapter; weights 1/0 are the single description's."""
    from vllm import SamplingParams

    half = [{"description": SCIENCE, "weight": 1}, {"description": MATH, "weight": 1}]
    text, headers = complete(server, half)
    assert headers["x-t2l-adapter"] == generator.name_for(half) not in {generator.name_for(SCIENCE), generator.name_for(MATH)}
    streamed, _ = complete(server, list(reversed(half)), stream=True)
    assert streamed == text
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    assert [o.outputs[0].text for o in engine.generate([PROMPT], [half], params)] == [text]
    _, headers = complete(server, [{"description": SCIENCE, "weight": 1.0}, {"description": MATH, "weight": 0}])
    assert headers["x-t2l-adapter"] == generator.name_for(SCIENCE)


def test_a_request_naming_a_native_lora_module_works_as_in_vllm(server):
    client = server.client()
    assert server.native_lora in {m.id for m in client.models.list().data}
    raw = client.completions.with_raw_response.create(model=server.native_lora, prompt=PROMPT, max_tokens=5, temperature=0)
    assert raw.headers["x-t2l-source"] == "none"
    assert raw.parse().model == server.native_lora


def test_64_concurrent_requests_over_8_descriptions_cause_8_generations(server):
    descriptions = [f"Concurrency task {i}: label the sentiment of product reviews." for i in range(8)]
    before = server.metrics()
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda i: complete(server, descriptions[i % 8], max_tokens=4), range(64)))
    after = server.metrics()
    names = {}
    for i, (_, headers) in enumerate(results):
        names.setdefault(descriptions[i % 8], set()).add(headers["x-t2l-adapter"])
    assert all(len(n) == 1 for n in names.values()) and len(names) == 8
    generations = after["t2l_generations_total"] - before["t2l_generations_total"]
    passes = after["t2l_hypernet_passes_total"] - before["t2l_hypernet_passes_total"]
    assert generations == 8, (generations, passes)
    assert passes < 8, (generations, passes)


def test_more_descriptions_than_lora_slots_round_robin(server):
    """--max-loras 2 --max-cpu-loras 2: six adapters in turn, three rounds; vLLM evicts and
    reloads them from their folders, and every answer stays the same."""
    descriptions = [f"Round-robin task {i}: rewrite sentences formally." for i in range(6)]
    rounds = [[complete(server, d, max_tokens=6)[0] for d in descriptions] for _ in range(3)]
    assert rounds[0] == rounds[1] == rounds[2]
    assert server.alive()


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        ({"task_description": ""}, 400, "task description is empty"),
        ({"task_description": "   "}, 400, "task description is empty"),
        ({"task_description": 42}, 400, "must be a string, got int"),
        ({"task_description": ["a"]}, 400, "item 0 of the mix must be"),
        ({"task_description": {"a": 1}}, 400, "must be a string, got dict"),
        ({"task_description": [{"description": "x", "weight": -1}]}, 400, "finite number >= 0"),
        ({"task_description": None}, 400, "is null"),
        ({"task_description": "x" * 3000}, 400, "3000 characters; the limit is 2048"),
        ({"task_description": "ok", "model": "no-such-model"}, 404, "does not exist"),
        ({"task_description": "ok", "model": "native-lora"}, 400, "cannot be combined with the LoRA adapter"),
        ({"model": "no-such-model"}, 404, "does not exist"),
        ({"model": "t2l-0123456789abcdef01234567"}, 404, "does not exist"),  # an invented adapter name
        ({"model": "../../etc"}, 404, "does not exist"),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, body, status, fragment):
    payload = {"model": server.model, "prompt": "x", "max_tokens": 2, **body}
    response = httpx.post(f"{server.url}/v1/completions", json=payload, headers={"Authorization": f"Bearer {server.api_key}"}, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"] and error["code"] == status
    # The OpenAI SDK raises the matching error with the same message.
    kind = {400: openai.BadRequestError, 404: openai.NotFoundError}[status]
    with pytest.raises(kind, match=fragment[:20]):
        server.client().completions.create(**{"model": server.model, "prompt": "x", "max_tokens": 2, **{k: v for k, v in body.items() if k == "model"}}, extra_body={k: v for k, v in body.items() if k != "model"})
    assert complete(server, SCIENCE, max_tokens=2)[0] is not None


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_malformed_json_is_a_400(server, path):
    response = httpx.post(f"{server.url}{path}", content=b'{"model": "tiny", "prompt": ', headers={"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_a_lone_surrogate_in_the_description_is_a_400(server):
    """JSON may escape a lone surrogate (\\ud800), which no UTF-8 text can hold."""
    body = b'{"model": "tiny", "prompt": "x", "max_tokens": 2, "task_description": "Summarise \\ud800 news."}'
    response = httpx.post(f"{server.url}/v1/completions", content=body, headers={"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"})
    assert response.status_code == 400
    assert "not valid Unicode text" in response.json()["error"]["message"]
    assert complete(server, SCIENCE, max_tokens=2)[0] is not None


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_description_requests_need_the_api_key(server, key):
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    body = {"model": server.model, "prompt": "x", "max_tokens": 2, "task_description": "A new task nobody asked for yet."}
    response = httpx.post(f"{server.url}/v1/completions", json=body, headers=headers)
    assert response.status_code == 401
    assert generation_count(server) == generation_count(server)  # no generation for an unauthorised request


def generation_count(server) -> float:
    return server.metrics()["t2l_generations_total"]


def test_no_label_grows_with_descriptions(server):
    text = httpx.get(f"{server.url}/metrics").text
    t2l = [line for line in text.splitlines() if line.startswith("t2l_")]
    assert not any("t2l-" in line for line in t2l)
    assert {"t2l_cache_lookups_total{result=\"hit\"}", "t2l_adapters_resident"} <= {l.rsplit(" ", 1)[0] for l in t2l}


def test_a_thousand_new_descriptions_keep_disk_and_memory_bounded(server):
    import psutil

    service = psutil.Process(int(next(server.adapter_dir.glob("t2l_vllm-adapters-*")).name.split("-")[2]))

    def rss() -> int:  # API server, engine and workers, and the (detached) adapter service
        root = psutil.Process(server.process.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True), service])

    for i in range(100):  # warm up allocators before the first measurement
        complete(server, f"Warm-up task {i}.", max_tokens=1)
    start_rss, peak_folders, rss_mib = rss(), 0, {}
    for i in range(1000):
        complete(server, f"Stream task {i}: answer questions about topic number {i}.", max_tokens=1)
        if i % 50 == 0:
            peak_folders = max(peak_folders, server.adapter_folders())
        if (i + 1) % 250 == 0:
            rss_mib[i + 1] = round(rss() / 2**20, 1)
    end_rss = rss()
    grown_mib = (end_rss - start_rss) / 2**20
    report = {"rss_start_mib": round(start_rss / 2**20, 1), "rss_mib_after_n_descriptions": rss_mib,
              "rss_growth_mib": round(grown_mib, 1), "peak_adapter_folders": peak_folders,
              "final_adapter_folders": server.adapter_folders()}
    print("bounded-memory report:", json.dumps(report))  # `pytest -s` shows it
    # resident (16) + evicted ones waiting out the 1 s removal grace (at most 16) + in flight (1)
    assert peak_folders <= 2 * 16 + 1 and server.adapter_folders() <= 2 * 16 + 1
    assert server.metrics()["t2l_adapters_resident"] <= 16
    lora_info = [l for l in httpx.get(f"{server.url}/metrics").text.splitlines() if l.startswith("vllm:lora_requests_info{")]
    assert len(lora_info) <= 8 and not any("t2l-" in l.replace("t2l-generated", "") for l in lora_info), lora_info[:5]
    # 1,000 adapters of 56 KiB would be 55 MiB if nothing were freed; allow allocator noise.
    assert grown_mib < 50, report
    assert server.alive()


def test_reusing_a_generated_adapter_name_is_served_and_pinned(server, generator):
    _, headers = complete(server, SCIENCE)
    name = headers["x-t2l-adapter"]
    raw = server.client().completions.with_raw_response.create(model=name, prompt=PROMPT, max_tokens=4, temperature=0)
    assert (raw.headers["x-t2l-adapter"], raw.headers["x-t2l-source"]) == (name, "request")
    assert raw.parse().model == name


def test_an_invalid_body_is_refused_before_any_adapter_is_made(server):
    before = generation_count(server)
    response = httpx.post(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {server.api_key}"},
                          json={"model": server.model, "messages": "not a list", "task_description": "A brand new task nobody used."})
    assert response.status_code == 400
    assert generation_count(server) == before


def test_deeply_nested_json_is_a_400(server):
    response = httpx.post(f"{server.url}/v1/completions", content=b"[" * 100_000,
                          headers={"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"})
    assert response.status_code == 400


def test_the_responses_api_serves_task_description_like_chat(server, generator):
    """OpenAI's current API: same adapter, same answer as chat, streaming included."""
    description, message = "Convert the text to uppercase.", "hello world"
    client = server.client()
    raw = client.responses.with_raw_response.create(model=server.model, input=message, max_output_tokens=16, temperature=0,
                                                    extra_body={"task_description": description})
    assert raw.headers["x-t2l-adapter"] == generator.name_for(description)
    assert raw.headers["x-t2l-source"] == "request"
    answer = raw.parse().output_text
    chatted, _ = chat(server, description, content=message)
    assert answer == client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": message}], max_tokens=16, temperature=0,
        extra_body={"task_description": description}).choices[0].message.content
    assert chatted  # the adapter answered at all
    events = client.responses.create(model=server.model, input=message, max_output_tokens=16, temperature=0, stream=True,
                                     extra_body={"task_description": description})
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == answer
    with pytest.raises(openai.BadRequestError, match="task description is empty"):
        client.responses.create(model=server.model, input=message, extra_body={"task_description": " "})


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/messages", {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/messages/count_tokens", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}),
        ("/tokenize", {"model": "tiny", "prompt": "hi"}),
        ("/v1/chat/completions/batch", {"model": "tiny", "messages": [[{"role": "user", "content": "hi"}]]}),
        ("/invocations", {"model": "tiny", "prompt": "hi", "max_tokens": 2}),
    ],
)
def test_routes_that_do_not_serve_the_field_refuse_it_and_work_without_it(server, path, body):
    headers = {"Authorization": f"Bearer {server.api_key}"}
    refused = httpx.post(f"{server.url}{path}", json={**body, "task_description": "Answer in French."}, headers=headers, timeout=120)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert "`task_description` is not served on" in error["message"] and "/v1/responses" in error["message"]
    assert error["param"] == "task_description"
    plain = httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=120)
    assert plain.status_code != 400 or "task_description" not in plain.text  # vLLM's own handling, untouched


def test_refusing_routes_still_need_the_api_key(server):
    response = httpx.post(f"{server.url}/v1/messages", json={"model": "tiny", "max_tokens": 4, "task_description": "x",
                                                            "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
    assert response.status_code == 401
