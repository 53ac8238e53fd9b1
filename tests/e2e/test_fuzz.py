"""Property-based fuzzing of the routes that serve `task_description`, against one real server.

Hypothesis draws request bodies for /v1/completions, /v1/chat/completions and
/v1/responses: `task_description` of every JSON type (null, booleans, integers of
any size, floats with NaN and infinities, strings, arrays, objects), strings of
any size up to past the description limit, any code point (control and format
characters, line separators, lone surrogates as JSON escapes them), and the fields
around it (model, prompt / messages / input, max_tokens, stream, unknown fields)
valid or not, serialised as escaped JSON, UTF-8, or bytes that are not UTF-8 at all,
plus bodies that are not JSON objects. Property: no answer is a 5xx (nor a stream
that ends in a 5xx error event), and after all of it the server is healthy, serves
a described request, and holds no lease.

The run is derandomised (the seed is derived from the test), so a failure
reproduces by running the test again; Hypothesis prints the failing body.
Valid requests ask for 1-2 tokens so the whole run stays near two minutes.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.server

EXAMPLES = 1500  # at least 1,000 requests in CI
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/responses")

# Any code point, plus the classes most likely to break something drawn often:
# control (Cc), format (Cf), line/paragraph separators and lone surrogates (Cs).
ANY_CHAR = st.one_of(st.characters(codec=None, exclude_categories=()), st.characters(codec=None, categories=["Cc", "Cf", "Cs", "Zl", "Zp"]))
TEXT = st.text(ANY_CHAR, max_size=48)
UTF8_TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=48)  # any text UTF-8 can carry, control characters included
LONG_TEXT = st.builds(lambda s, n: (s or "x") * n, TEXT, st.integers(20, 400))  # up to ~19,000 chars: past the 2048 limit
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(2**80), 2**80), st.floats(), TEXT)
JSON_VALUE = st.recursive(JSON_SCALAR, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=10)
SENSIBLE = st.sampled_from(["Convert the text to uppercase.", "Sort the words alphabetically.", "Answer in French.", "  spaced   out \n"])


def mostly(valid: st.SearchStrategy, invalid: st.SearchStrategy) -> st.SearchStrategy:
    """`valid` about five times in six: each field is usually well formed, so whole bodies often are,
    and requests reach adapter generation and the engine, not only the refusals. (`one_of` with a
    branch repeated would not weight it: Hypothesis merges equal branches; the invalid pick is an
    inner value of the range, which Hypothesis does not favour as it does the bounds.)"""
    return st.integers(0, 5).flatmap(lambda pick: invalid if pick == 3 else valid)


DESCRIPTION = mostly(SENSIBLE | UTF8_TEXT, TEXT | LONG_TEXT | JSON_VALUE)
MAX_TOKENS = mostly(st.integers(1, 2), st.integers(-3, 0) | st.integers(10**5, 10**30) | JSON_VALUE)


def model_field(served: str) -> st.SearchStrategy:
    return mostly(st.just(served), st.sampled_from(["native-lora", "t2l-0123456789abcdef01234567"]) | TEXT | JSON_SCALAR)


def route_fields(route: str) -> st.SearchStrategy[dict]:
    """The fields that carry the query and the length limit on each route, valid or not."""
    text = mostly(UTF8_TEXT, TEXT | JSON_VALUE)
    if route == "/v1/completions":
        return st.fixed_dictionaries({"prompt": text, "max_tokens": MAX_TOKENS})
    if route == "/v1/chat/completions":
        message = st.fixed_dictionaries({"role": mostly(st.sampled_from(["user", "system"]), TEXT), "content": text})
        return st.fixed_dictionaries({"messages": mostly(st.lists(message, min_size=1, max_size=3), JSON_VALUE), "max_tokens": MAX_TOKENS})
    return st.fixed_dictionaries({"input": text, "max_output_tokens": MAX_TOKENS})


@st.composite
def requests(draw, served: str) -> tuple[str, bytes]:
    """(route, raw body)."""
    route = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 19)) == 0:  # one in twenty: not a JSON object at all
        return route, draw(st.binary(max_size=64) | JSON_VALUE.map(lambda v: json.dumps(v).encode()))
    body = draw(route_fields(route))
    if draw(st.booleans()):
        body["model"] = draw(model_field(served))
    if draw(st.integers(0, 3)) > 0:
        body["task_description"] = draw(DESCRIPTION)
    if draw(st.booleans()):
        body["stream"] = draw(mostly(st.booleans(), JSON_SCALAR))
    body.update(draw(st.dictionaries(TEXT, JSON_VALUE, max_size=2)))  # unknown fields, or junk in known ones
    encoding = draw(st.sampled_from(["escaped", "strict", "surrogatepass"]))  # the last sends bytes that are not UTF-8
    text = json.dumps(body, ensure_ascii=encoding == "escaped")
    try:
        raw = text.encode("utf-8", errors="strict" if encoding == "escaped" else encoding)
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form: send it escaped
        raw = json.dumps(body).encode()
    return route, raw


def server_errors_in(response: httpx.Response) -> list[str]:
    """5xx answers, including error events inside a 200 stream."""
    if response.status_code >= 500:
        return [f"HTTP {response.status_code}: {response.text[:500]}"]
    found = []
    for line in response.text.splitlines():
        if line.startswith("data: {") and '"error"' in line:
            error = json.loads(line[len("data: "):]).get("error")
            if isinstance(error, dict) and int(error.get("code") or 0) >= 500:
                found.append(line[:500])
    return found


def test_fuzzed_bodies_never_get_a_5xx_and_the_server_stays_healthy(server):
    headers = {"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"}
    sent = []
    reasons = Counter()
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as http:

        @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, print_blob=True,
                  phases=(Phase.explicit, Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))
        @given(request=requests(server.model))
        def one(request: tuple[str, bytes]) -> None:
            route, raw = request
            note(f"POST {route} {raw!r}")
            response = http.post(route, content=raw)
            sent.append(response.status_code)
            if response.status_code != 200:
                reasons[response.text[:90]] += 1
            assert not server_errors_in(response), server_errors_in(response)

        start = time.monotonic()
        one()
        elapsed = time.monotonic() - start
    statuses = {status: sent.count(status) for status in sorted(set(sent))}
    print(f"fuzz: {len(sent)} requests in {elapsed:.0f} s, statuses {statuses}")  # `pytest -s` shows it
    for reason, count in reasons.most_common(10):  # the commonest refusals: what the fuzzer mostly hit
        print(count, reason)
    assert len(sent) >= 1000, statuses
    assert statuses.get(200, 0) >= 200, statuses  # the valid corner was reached too, not only refusals
    assert server.alive()
    reply = server.client().completions.create(model=server.model, prompt="hello", max_tokens=2,
                                               extra_body={"task_description": "Convert the text to uppercase."})
    assert reply.choices[0].text is not None
    wait_until_no_pins(server)


def wait_until_no_pins(server, timeout_s: float = 60) -> None:
    """Every lease is given back once nothing is in flight (waiting for the service, not timing it)."""
    deadline = time.monotonic() + timeout_s
    while server.metrics().get("t2l_adapter_pins", 0) != 0:
        assert time.monotonic() < deadline, f"leases still held: {server.metrics().get('t2l_adapter_pins')}"
        time.sleep(0.5)
