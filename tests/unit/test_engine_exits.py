"""The launcher's verdict on vLLM's engine: a non-zero exit of an engine core process is a failure.

Real child processes named as vLLM names its engine cores; no vLLM needed.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal

import pytest

from t2l_vllm.vllm_plugin.engine_exits import EngineExits


def _exit_with(status: int, watched) -> None:
    watched.wait(30)  # alive while the parent notes its children, as an engine core is
    if status < 0:
        os.kill(os.getpid(), -status)
    os._exit(status)


def ended_children(*named_statuses: tuple[str, int]) -> EngineExits:
    context = multiprocessing.get_context("fork")
    watched = context.Event()
    children = [context.Process(target=_exit_with, args=(status, watched), name=name) for name, status in named_statuses]
    exits = EngineExits()
    for child in children:
        child.start()
    exits.watch_children()
    watched.set()
    for child in children:
        child.join(30)
    return exits


@pytest.mark.parametrize(
    "children,fragment",
    [
        ((("EngineCore", -signal.SIGKILL),), "EngineCore (pid"),
        ((("EngineCore", -signal.SIGKILL),), "was killed by SIGKILL (nothing can catch it: the kernel's out-of-memory killer"),
        ((("EngineCore", -signal.SIGTERM),), "was killed by SIGTERM (it reached the engine directly, as a SIGTERM to the whole "
                                             "process group does (systemd's default); send it to the server's process alone"),
        ((("EngineCore_DP1", 1),), "exited with status 1"),
        ((("EngineCore", 0), ("EngineCore_DP1", -signal.SIGKILL)), "EngineCore_DP1"),
        ((("EngineCore", 0),), None),
        ((("SomeHelper", 1),), None),  # not an engine core: not vLLM's engine failing
    ],
)
def test_an_engine_core_that_ended_non_zero_is_a_failure_and_only_that(children, fragment):
    failure = ended_children(*children).failure()
    if fragment is None:
        assert failure is None
    else:
        assert failure is not None and fragment in failure  # what happened, not a guess: the signal, or the status


def test_the_record_crosses_to_another_process_empty():
    """vLLM pickles its options for other API server processes; process handles stay behind."""
    exits = ended_children(("EngineCore", 1))
    assert exits.failure() is not None
    assert pickle.loads(pickle.dumps(exits)).failure() is None
