"""`t2l-vllm serve --router`: requests without a description are routed; with one, they are not."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import yaml

pytestmark = pytest.mark.server

LIBRARY = {
    "threshold": 0.3,
    "fallback": "base",
    "tasks": [
        {"name": "math", "descriptions": ["Solve arithmetic word problems step by step.", "Do maths."],
         "examples": ["Tom has 3 apples and buys 4 more. How many?", "What is 12 times 7?", "A train goes 60 km/h for 2 hours; how far does it go?"]},
        {"name": "french", "descriptions": ["Translate English text into French."],
         "examples": ["Translate to French: the cat sleeps.", "How do you say 'good morning' in French?"]},
    ],
}
MATH_QUERY = "If I have 10 pears and eat 3 of them, how many pears are left?"
OFF_TOPIC = "Who painted the Mona Lisa?"


SHOUT = {"name": "shout", "descriptions": ["Convert the text to uppercase."],
         "examples": ["Write this in capital letters: hello world", "Make this text upper case: good morning", "Shout it: see you soon"]}
SHOUT_QUERY = "Put this in capital letters: good night"


@pytest.fixture(scope="module")
def routed(tmp_path_factory, start_server, generator, default_paths):
    """A server whose library has two generated tasks and one served by a LoRA trained with `t2l-vllm train lora`,
    which is also registered the ordinary vLLM way (`trained-shout`) to compare answers against."""
    from t2l_vllm.toy.world import make_examples, write_jsonl

    work = tmp_path_factory.mktemp("routed")
    write_jsonl(work / "upper.jsonl", make_examples(["uppercase"], 64, seed=5))
    subprocess.run([sys.executable, "-m", "t2l_vllm", "train", "lora", "--model", str(default_paths.base_model), "--data", str(work / "upper.jsonl"),
                    "--steps", "20", "--batch-size", "8", "-o", str(work / "shout")], check=True, capture_output=True, timeout=600)
    library = work / "library.yaml"
    library.write_text(yaml.safe_dump({**LIBRARY, "tasks": [*LIBRARY["tasks"], {**SHOUT, "adapter": "shout"}]}))  # relative to the library
    native = generator.generate(["A LoRA registered the ordinary vLLM way."])[0].save_peft(work / "native")
    options = ["--router", str(library), "--lora-modules", f"native-lora={native}", f"trained-shout={work / 'shout'}"]
    with start_server(work, options) as server:
        yield server


def ask(server, content, **extra_body):
    raw = server.client().chat.completions.with_raw_response.create(
        model=server.model, messages=[{"role": "user", "content": content}], max_tokens=8, temperature=0,
        extra_body={"ignore_eos": True, **extra_body},
    )
    return raw.parse().choices[0].message.content, raw.headers


def test_a_query_without_description_is_routed_to_its_task(routed, generator):
    _, headers = ask(routed, MATH_QUERY)
    assert headers["x-t2l-source"] == "router"
    assert headers["x-t2l-task"] == "math"
    assert float(headers["x-t2l-score"]) >= 0.3
    assert headers["x-t2l-adapter"] == generator.name_for("Solve arithmetic word problems step by step.")


def test_all_queries_of_a_task_share_one_adapter(routed):
    _, first = ask(routed, MATH_QUERY)
    _, second = ask(routed, "A shop sells pens at 2 dollars each. How much do 6 pens cost?")
    assert second["x-t2l-task"] == "math"
    assert first["x-t2l-adapter"] == second["x-t2l-adapter"]


def test_off_topic_query_with_base_fallback_is_served_by_the_base_model(routed, engine):
    from vllm import SamplingParams

    text, headers = ask(routed, OFF_TOPIC)
    assert (headers["x-t2l-source"], headers["x-t2l-task"], headers["x-t2l-adapter"]) == ("router", "fallback:base", "base")
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    (offline,) = engine.chat([[{"role": "user", "content": OFF_TOPIC}]], None, params)
    assert text == offline.outputs[0].text


def test_a_request_with_its_own_description_is_not_routed(routed, generator):
    _, headers = ask(routed, MATH_QUERY, task_description="Translate English text into French.")
    assert headers["x-t2l-source"] == "request"
    assert "x-t2l-task" not in headers
    assert headers["x-t2l-adapter"] == generator.name_for("Translate English text into French.")


def test_a_request_naming_a_lora_module_is_not_routed(routed):
    raw = routed.client().chat.completions.with_raw_response.create(
        model="native-lora", messages=[{"role": "user", "content": MATH_QUERY}], max_tokens=4, temperature=0
    )
    assert raw.headers["x-t2l-source"] == "none" and "x-t2l-task" not in raw.headers
    assert raw.parse().model == "native-lora"


def test_router_decisions_are_counted_by_task_name(routed):
    ask(routed, MATH_QUERY)
    metrics = routed.metrics()
    assert metrics['t2l_router_decisions_total{task="math"}'] >= 1
    assert not any("Mona" in name or "pears" in name for name in metrics)


def test_the_playground_lists_the_library_tasks_nearest_to_a_description(routed):
    response = httpx.post(f"{routed.url}/t2l/adapter", json={"task_description": "Solve arithmetic word problems step by step."},
                          headers={"Authorization": f"Bearer {routed.api_key}"}, timeout=120)
    assert response.status_code == 200, response.text
    tasks = response.json()["nearest_tasks"]
    assert tasks[0]["task"] == "math" and {t["task"] for t in tasks} == {"math", "french", "shout"}  # the whole library, best first
    assert tasks[0]["score"] > tasks[1]["score"] >= tasks[2]["score"]


def test_a_task_with_a_trained_adapter_is_served_by_exactly_that_adapter(routed, generator):
    """Fetch or generate: routed queries for `shout` get the trained LoRA's answers, named as such;
    other tasks keep generating, and a request's own description still wins."""
    answer, headers = ask(routed, SHOUT_QUERY)
    assert headers["x-t2l-source"] == "router" and headers["x-t2l-task"] == "shout"
    assert headers["x-t2l-adapter"].startswith("t2l-") and headers["x-t2l-adapter"] != generator.name_for(SHOUT["descriptions"][0])
    reply = routed.client().chat.completions.create(model="trained-shout", messages=[{"role": "user", "content": SHOUT_QUERY}],
                                                    max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    assert answer == reply.choices[0].message.content
    again, second = ask(routed, "Make these words upper case: big red dog")
    assert second["x-t2l-task"] == "shout" and second["x-t2l-adapter"] == headers["x-t2l-adapter"]
    _, own = ask(routed, SHOUT_QUERY, task_description="Reverse the text.")
    assert own["x-t2l-source"] == "request" and own["x-t2l-adapter"] == generator.name_for("Reverse the text.")
    _, math = ask(routed, MATH_QUERY)
    assert math["x-t2l-adapter"] == generator.name_for("Solve arithmetic word problems step by step.")
    assert routed.metrics()['t2l_router_decisions_total{task="shout"}'] >= 2


@pytest.mark.parametrize(
    "library,fragment",
    [
        ("tasks:\n  - name: math\n    descriptions: [\"d\"]\n", "task `math` needs `examples`"),
        ("tasks: [unclosed\n", "not valid YAML"),
        ("tasks:\n  - {name: t, descriptions: [d], examples: [e], adapter: nowhere}\n", "is not a PEFT adapter folder"),
    ],
)
def test_a_bad_library_stops_start_up_with_a_clear_error(tmp_path, library, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(library)
    result = subprocess.run([sys.executable, "-m", "t2l_vllm", "serve", "--router", str(path), "--port", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert str(path) in result.stderr and fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_every_metric_the_grafana_dashboard_queries_is_on_metrics(routed):
    """docs/grafana/t2l_vllm.json: each series its panels query exists on a running server's /metrics."""
    import json
    import re
    from pathlib import Path

    import httpx

    dashboard = json.loads((Path(__file__).parents[2] / "docs" / "grafana" / "t2l_vllm.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\b(?:t2l_|vllm:)[A-Za-z0-9_:]+", target["expr"])}
    assert any(n.startswith("t2l_") for n in queried) and any(n.startswith("vllm:") for n in queried)
    ask(routed, MATH_QUERY)  # routed
    ask(routed, "Say hi.", task_description="Answer in one word.")  # described
    for i in range(20):  # more new descriptions than the 16-entry cache: evictions
        ask(routed, "hi", task_description=f"Dashboard task {i}: reply briefly.")
    with pytest.raises(Exception):
        ask(routed, "hi", task_description="   ")  # a refusal
    exposed = set()
    for line in httpx.get(f"{routed.url}/metrics", timeout=30).text.splitlines():
        if line.startswith("# TYPE "):
            exposed.add(line.split()[2])
        elif line and not line.startswith("#"):
            exposed.add(line.split("{")[0].split(" ")[0])
    missing = sorted(n for n in queried if n not in exposed)
    assert not missing, missing
