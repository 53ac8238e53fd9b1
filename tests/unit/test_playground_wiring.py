"""The playground's wiring without a server: the flag, the routes vLLM's app gets, the service's report op."""

from __future__ import annotations

import asyncio

import pytest

from t2l_vllm.errors import InvalidDescriptionError
from t2l_vllm.router import RouterSettings
from t2l_vllm.service.client import AdapterClient, service_socket_path, wait_until_stopped
from t2l_vllm.service.settings import ServiceSettings

PLAYGROUND_ROUTES = {("GET", "/t2l/playground"), ("POST", "/t2l/adapter")}


def serve_settings(*options: str, base: ServiceSettings | None = None) -> ServiceSettings:
    from t2l_vllm.cli import build_parser
    from t2l_vllm.cli.serve import service_settings

    args, _ = build_parser().parse_known_args(["serve", *options])
    return service_settings(args, "hypernet", base)


def test_the_playground_is_on_by_default_and_no_playground_turns_it_off():
    assert serve_settings().playground is True
    assert serve_settings("--no-playground").playground is False
    assert ServiceSettings.from_json(serve_settings("--no-playground").to_json()).playground is False
    # a settings file's `playground: false` holds unless a flag says otherwise
    assert serve_settings(base=ServiceSettings("h", playground=False)).playground is False
    assert serve_settings("--playground", base=ServiceSettings("h", playground=False)).playground is True


def playground_routes(monkeypatch, settings: ServiceSettings | None) -> set[tuple[str, str]]:
    """The playground's routes on the app vLLM builds with the t2l_vllm endpoint plugin named."""
    from fastapi.routing import APIRoute
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    monkeypatch.setenv("VLLM_PLUGINS", "t2l_vllm")
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", "tiny", "--api-key", "key", "--enable-lora"])
    if settings is not None:
        args.t2l = settings
    app = build_app(args, ("generate",), None)
    routes = {(method, route.path) for route in app.routes if isinstance(route, APIRoute) for method in route.methods}
    return routes & PLAYGROUND_ROUTES


def test_vllm_app_has_the_playground_routes_unless_turned_off(monkeypatch):
    assert playground_routes(monkeypatch, ServiceSettings("h")) == PLAYGROUND_ROUTES
    assert playground_routes(monkeypatch, ServiceSettings("h", playground=False)) == set()
    assert playground_routes(monkeypatch, None) == set()  # the plugin loaded without `t2l-vllm serve`


def test_the_page_needs_nothing_from_elsewhere():
    from t2l_vllm.vllm_plugin.playground import page_html

    html = page_html()
    assert "<script>" in html and "http://" not in html and "https://" not in html and " src=" not in html


def test_report_makes_or_finds_the_adapter_and_refuses_what_acquire_refuses(default_paths, generator, tmp_path):
    async def scenario():
        settings = ServiceSettings(str(default_paths.hypernet), str(tmp_path / "adapters"), router=RouterSettings(library="starter"))
        path = service_socket_path(f"test-{tmp_path.name}")
        client = await AdapterClient.connect_or_start(path, settings)
        try:
            description = "Solve grade-school math word problems step by step."
            first = await client.report(description, 3)
            again = await client.report("  Solve grade-school math   word problems step by step. ", 3)
            assert first.name == again.name == generator.name_for(description)
            assert (first.generated, again.generated) == (True, False)
            assert first.milliseconds >= 0 and again.milliseconds >= 0
            assert len(first.nearest_tasks) == 3 and first.nearest_tasks == again.nearest_tasks
            scores = [score for _, score in first.nearest_tasks]
            assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
            assert (await client.report(description, 0)).nearest_tasks == ()
            lease = await client.acquire(description)  # the report left it in the cache, unleased
            assert lease.name == first.name
            lease.release()
            for bad in ("   ", 42, None, "x" * 3000, [{"description": "x", "weight": -1}]):
                with pytest.raises(InvalidDescriptionError) as by_acquire:
                    await client.acquire(bad)
                with pytest.raises(InvalidDescriptionError) as by_report:
                    await client.report(bad, 3)
                assert str(by_report.value) == str(by_acquire.value)
        finally:
            await client.close()
            assert wait_until_stopped(path, 30)

    asyncio.run(scenario())



# The toy task each example of the embedded default's examples.json is (the file itself names none: hints are data).
TOY_TASK_OF = {
    "Convert the text to uppercase.": "uppercase",
    "Sort the words alphabetically.": "sort_words",
    "Spell the whole input backwards, last character first.": "reverse",
    "Reverse the order of the words.": "reverse_words",
    "Join the first letters of all the words into one word.": "first_letters",
    "Reduce the phrase word by word to the first 4 letters of each.": "keep_first_4",
    "Each letter goes 2 places forward in the alphabet, and the spaces do not change.": "shift_forward_2",
}


def test_the_embedded_defaults_examples_are_toy_tasks_with_their_exact_answers(default_paths):
    """The hints fit the model: each is a toy task, its answer that task's exact output (the served adapter's
    answer is checked against the same file in tests/e2e/test_playground.py)."""
    import json

    from t2l_vllm.default_model import ASSETS
    from t2l_vllm.toy.demo import expected_answer
    from t2l_vllm.vllm_plugin.playground import EXAMPLES_FILE, examples_for

    shipped = json.loads((ASSETS / "hypernet" / EXAMPLES_FILE).read_text())["examples"]
    assert examples_for(str(default_paths.hypernet)) == shipped  # installed beside the hypernetwork, read as shipped
    assert [e["description"] for e in shipped] == list(TOY_TASK_OF)
    for example in shipped:
        assert example["answer"] == expected_answer(TOY_TASK_OF[example["description"]], example["message"]), example
        assert set(example["message"]) <= set("abcdefghijklmnopqrstuvwxyz ") and 1 <= len(example["message"].split()) <= 4


@pytest.mark.parametrize(
    "content,warned",
    [
        (None, False),  # no file: generic hints, nothing to say
        ("{not json", True),
        ('{"examples": []}', True),
        ('{"examples": [{"description": "x"}]}', True),
        ('{"examples": [{"description": "x", "message": "y", "answer": 3}]}', True),
        ('["a list"]', True),
    ],
    ids=["missing", "not-json", "empty", "no-message", "answer-not-a-string", "not-an-object"],
)
def test_a_hypernetwork_without_usable_examples_gets_the_generic_hints(tmp_path, caplog, content, warned):
    from t2l_vllm.vllm_plugin.playground import EXAMPLES_FILE, GENERIC_EXAMPLES, examples_for

    if content is not None:
        (tmp_path / EXAMPLES_FILE).write_text(content)
    with caplog.at_level("WARNING", logger="t2l_vllm.vllm_plugin.playground"):
        assert examples_for(str(tmp_path)) == [dict(e) for e in GENERIC_EXAMPLES]
    assert any(EXAMPLES_FILE in r.getMessage() for r in caplog.records) is warned


def test_the_page_carries_a_hypernetworks_own_examples_and_no_text_can_end_their_block(tmp_path):
    import json

    from t2l_vllm.vllm_plugin.playground import EXAMPLES_FILE, MAX_EXAMPLES, examples_for, render_page

    hostile = {"description": "Close </script><script>alert(1)</script> & go", "message": "a < b > c"}
    examples = [hostile, {"description": "Count the words.", "message": "one two", "answer": "2"}] * MAX_EXAMPLES
    (tmp_path / EXAMPLES_FILE).write_text(json.dumps({"examples": examples}))
    read = examples_for(str(tmp_path))
    assert read == examples[:MAX_EXAMPLES]
    html = render_page(read)
    block = html.split('<script type="application/json" id="examples-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(block) == read  # the whole list is inside the block: nothing in it closed the tag
    assert "alert(1)</script>" not in html and "/* the examples" not in html
