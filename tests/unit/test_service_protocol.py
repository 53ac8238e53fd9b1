"""The adapter service's messages: every one survives the wire, and the documented table is the code's."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from t2l_vllm.errors import InvalidDescriptionError, T2LError
from t2l_vllm.service import protocol
from t2l_vllm.service.protocol import (
    MESSAGES,
    Acquire,
    AdapterBody,
    CatalogEntry,
    Failed,
    Hello,
    LeaseByName,
    Leased,
    Release,
    Removed,
    Report,
    Reported,
    Route,
    Routed,
    RouterInfo,
    decode,
    encode,
)

BODY = AdapterBody("t2l-" + "a" * 24, 2**40 + 3, "/dev/shm/x/t2l-a", 12345, lease=7)
EXAMPLES = [
    Hello(1, "/h", "L", "f" * 64, "/base", 8, ["q_proj", "v_proj"], 128, 2**30, "/dev/shm/x", None, [AdapterBody("p", 2, "/p", 3)],
          RouterInfo(20, "starter", 0.41, "base"), [CatalogEntry("t2l/arithmetic", "Solve arithmetic.", None),
                                                    CatalogEntry("t2l/sort-the-words-1a2b3c", "Sort the words.", "t2l-" + "e" * 24)]),
    Hello(1, "/h", "M", "f" * 64, "", 16, ["qkv_proj"], 1, 1, "/s", "/m", [], None, []),
    Acquire(1, "Answer science questions \udc80 with a lone surrogate."),
    Acquire(2, [{"description": "a", "weight": 0.5}, {"description": "b", "weight": 0.5}]),
    LeaseByName(3, "t2l-" + "b" * 24),
    Route(4, "What is 12 times 7?"),
    Report(5, "Summarise the article.", 3),
    Release(7),
    Leased(1, BODY),
    Leased(3, None),
    Routed(4, "arithmetic", "Solve arithmetic.", 0.83, None, BODY),
    Routed(4, None, None, 0.1, "base", None),
    Reported(5, "t2l-" + "c" * 24, True, 12.5, (("arithmetic", 0.9), ("french", 0.2))),
    Failed.of(6, InvalidDescriptionError("too long")),
    Removed("t2l-" + "d" * 24),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: f"{m.OP}")
def test_every_message_round_trips(message):
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert decode(line) == message


def test_every_message_kind_has_an_example():
    assert {type(m) for m in EXAMPLES} == set(MESSAGES.values())


def test_the_documented_table_is_the_messages_fields():
    documented = {}
    for line in protocol.__doc__.splitlines():
        for match in re.finditer(r'\{"op": "(\w+)"(.*?)\}', line):
            documented[match.group(1)] = re.findall(r'"(\w+)"', match.group(2))
    hello = re.search(r'\{"op": "hello", (.*?)\}', protocol.__doc__, re.S).group(1)  # spans three lines
    documented["hello"] = re.findall(r'"(\w+)"', hello)
    assert set(documented) == set(MESSAGES)
    for op, cls in MESSAGES.items():
        assert documented[op] == [f.name for f in fields(cls)], op


def test_errors_come_back_as_their_class_and_unknown_ones_as_t2l_error():
    assert isinstance(decode(encode(Failed.of(1, InvalidDescriptionError("x")))).error(), InvalidDescriptionError)
    unknown = Failed(1, "SomethingElse", "boom").error()
    assert type(unknown) is T2LError and str(unknown) == "boom"


@pytest.mark.parametrize("line", [b"[1, 2]", b'{"op": "nope"}', b'{"op": "acquire", "id": 1}', b'{"op": "leased", "id": 1, "adapter": 5}'])
def test_a_line_that_is_no_message_is_a_value_error(line):
    with pytest.raises(ValueError):
        decode(line)
