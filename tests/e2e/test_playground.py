"""The playground against a real `t2l-vllm serve`: its routes over raw HTTP, and its page in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.server

PAGE = "/t2l/playground"
ADAPTER = "/t2l/adapter"
DESCRIPTION = "Capital letters everywhere, please."  # a wording the toy hypernetwork did not train on
MESSAGE = "good day"
FIELDS = {"name", "generated", "milliseconds", "base_model", "nearest_tasks"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def basic(password: str, user: str = "me") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def post(server, path: str, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    """A JSON POST; the body is encoded here so that a lone surrogate travels as the escape `\\ud800`."""
    headers = bearer(server.api_key) if headers is None else headers
    return httpx.post(f"{server.url}{path}", content=json.dumps(body).encode(), headers={**headers, "Content-Type": "application/json"}, timeout=120)


@pytest.mark.parametrize(
    "headers,status",
    [
        (lambda key: {}, 401),
        (lambda key: bearer("wrong-key"), 401),
        (lambda key: basic("wrong-key"), 401),
        (lambda key: {"Authorization": "Basic not base64!"}, 401),
        (bearer, 200),
        (basic, 200),
        (lambda key: basic(key, user=""), 200),
    ],
    ids=["none", "wrong-bearer", "wrong-basic", "garbled-basic", "bearer", "basic", "basic-no-user"],
)
def test_the_page_needs_the_api_key_as_bearer_token_or_basic_password(server, headers, status):
    response = httpx.get(f"{server.url}{PAGE}", headers=headers(server.api_key), timeout=60)
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Basic ")  # the browser asks for the key
    else:
        assert response.headers["content-type"].startswith("text/html") and "t2l_vllm playground" in response.text


def page_examples(html: str) -> list[dict[str, str]]:
    """The examples the server filled into the page (its hints)."""
    return json.loads(html.split('<script type="application/json" id="examples-data">', 1)[1].split("</script>", 1)[0])


def test_the_pages_hints_are_tasks_the_served_hypernetwork_answers_right(server, default_paths):
    """The embedded default's examples.json, filled into the page; each example's description gets its answer."""
    html = httpx.get(f"{server.url}{PAGE}", headers=bearer(server.api_key), timeout=60).text
    examples = page_examples(html)
    assert examples == json.loads((default_paths.hypernet / "examples.json").read_text())["examples"]
    assert "science" not in html.lower()  # the old hints were science questions the toy model cannot answer
    for example in examples:
        assert chat(server, example["message"], example["description"]) == example["answer"], example


@pytest.mark.parametrize("headers", [{}, bearer("wrong-key"), basic("wrong-key")])
def test_the_adapter_route_needs_the_api_key_and_makes_nothing_without_it(server, headers):
    before = server.metrics()["t2l_generations_total"]
    response = post(server, ADAPTER, {"task_description": "Playground: a description nobody authorised."}, headers)
    assert response.status_code == 401 and "API key" in response.json()["error"]["message"]
    assert server.metrics()["t2l_generations_total"] == before


def test_the_adapter_route_reports_the_adapter_chat_requests_get(server, generator):
    description = "Playground: answer with the letter of the right option."
    first = post(server, ADAPTER, {"task_description": description})
    assert first.status_code == 200, first.text
    report = first.json()
    assert set(report) == FIELDS
    assert report["name"] == generator.name_for(description) and report["generated"] is True
    assert isinstance(report["milliseconds"], float) and report["milliseconds"] >= 0
    assert report["base_model"] == server.model
    assert report["nearest_tasks"] == []  # this server has no router library
    again = post(server, ADAPTER, {"task_description": f"  {description} "}, basic(server.api_key)).json()
    assert (again["name"], again["generated"]) == (report["name"], False)
    chat = server.client().chat.completions.with_raw_response.create(
        model=report["base_model"], messages=[{"role": "user", "content": "hi"}], max_tokens=2, extra_body={"task_description": description}
    )
    assert chat.headers["x-t2l-adapter"] == report["name"]


@pytest.mark.parametrize(
    "description",
    ["", "   ", 42, {"a": 1}, ["a"], "x" * 3000, [{"description": "x", "weight": -1}], "Summarise \ud800 news."],
)
def test_bad_descriptions_get_the_400_a_chat_request_gets(server, description):
    chat = post(server, "/v1/chat/completions", {"model": server.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                                 "task_description": description})
    mine = post(server, ADAPTER, {"task_description": description})
    assert mine.status_code == chat.status_code == 400
    assert mine.json()["error"] == chat.json()["error"]


@pytest.mark.parametrize(
    "content,fragment",
    [
        (b'{"task_description": ', "not valid JSON"),
        (b'{"description": "a field of another name"}', "a JSON object with `task_description`"),
        (b'["a list"]', "a JSON object with `task_description`"),
        (b'{"task_description": null}', "must be a string, got NoneType"),
    ],
)
def test_bodies_without_a_description_are_400s_that_say_why(server, content, fragment):
    response = httpx.post(f"{server.url}{ADAPTER}", content=content, headers={**bearer(server.api_key), "Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 400 and fragment in response.json()["error"]["message"]


def chromium() -> str:
    """Debian's chromium (`apt-get install chromium`), which .ci/run installs; skipped only where there is none."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium on PATH in CI; .ci/run installs Debian's `chromium`.")
        pytest.skip("no chromium on PATH: `apt-get install chromium` to run the playground in a browser.")
    return path


def test_the_page_in_a_browser_shows_both_answers_and_the_servers_errors(server, generator, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium())
        try:
            # The key as a Basic password, sent when the server asks for it (its 401), as a person would type it.
            context = browser.new_context(http_credentials={"username": "", "password": server.api_key}, viewport={"width": 1100, "height": 860})
            page = context.new_page()
            urls: list[str] = []
            page.on("request", lambda request: urls.append(request.url))
            assert page.goto(f"{server.url}{PAGE}").ok
            examples = page_examples(page.content())
            assert page.get_attribute("#description", "placeholder") == examples[0]["description"]  # the hints fit the model
            assert page.get_attribute("#message", "placeholder") == examples[0]["message"]
            assert page.locator("#examples button").count() == len(examples)
            page.fill("#key", server.api_key)  # the chat route takes the key only as a bearer token
            page.fill("#description", DESCRIPTION)
            page.fill("#message", MESSAGE)
            page.click("#go")
            expect(page.locator("#adapted-served")).not_to_be_empty(timeout=300_000)
            assert page.locator("#error").text_content() == ""

            base, adapted = (chat(server, MESSAGE, d) for d in (None, DESCRIPTION))
            assert page.locator("#base-answer").text_content() == base
            assert page.locator("#adapted-answer").text_content() == adapted
            name = generator.name_for(DESCRIPTION)
            assert page.locator("#adapter-name").text_content() == name
            assert " ms (" in page.locator("#adapter-time").text_content()
            assert page.locator("#base-served").text_content() == "served by base"
            assert page.locator("#adapted-served").text_content() == f"served by {name}"
            assert "no router library" in page.locator("#nearest").text_content()
            assert page.locator("#expected").text_content() == ""  # not one of the examples
            page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)

            example = examples[2]
            page.locator("#examples button").nth(2).click()  # an example fills both fields in
            assert (page.input_value("#description"), page.input_value("#message")) == (example["description"], example["message"])
            page.click("#go")
            expect(page.locator("#adapted-answer")).to_have_text(example["answer"], timeout=300_000)
            assert page.locator("#expected").text_content() == f"the example's answer: {example['answer']}"

            page.fill("#description", "   ")  # not empty to the browser; empty to the server
            page.click("#go")
            expect(page.locator("#error")).not_to_be_empty(timeout=120_000)
            expected = post(server, ADAPTER, {"task_description": "   "}).json()["error"]["message"]
            assert page.locator("#error").text_content() == expected
            assert page.locator("#adapted-answer").text_content() == ""
            page.screenshot(path=str(tmp_path / "playground-error.png"), full_page=True)
            assert all(url.startswith(server.url) for url in urls), urls  # nothing from elsewhere
        finally:
            browser.close()
    assert Path(tmp_path / "playground.png").stat().st_size > 0


def chat(server, message: str, description: str | None) -> str:
    """What the page asks, through the OpenAI client (greedy, the page's 64 tokens)."""
    extra = {} if description is None else {"task_description": description}
    reply = server.client().chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": message}], max_tokens=64, temperature=0, extra_body=extra
    )
    return reply.choices[0].message.content
