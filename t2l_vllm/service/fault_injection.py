"""TEST-ONLY fault injection: a hypernetwork pass that raises, on demand.

A pass fails for real only on a bug or a device out of memory, neither of which a
test can cause on purpose. With `T2L_VLLM_TEST_ONLY_FAIL_PASSES_WITH=MARKER` in the
adapter service's environment, every pass that holds a description containing
MARKER raises instead of generating, so an end-to-end test can check what a failed
pass does to the requests waiting on it and to those that follow. Unset (always,
outside tests), the generator is returned unchanged. This is the one place the
variable is read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..adapters import LoRAAdapter
from ..errors import T2LError
from ..generator import AdapterGenerator

FAIL_PASSES_ENV = "T2L_VLLM_TEST_ONLY_FAIL_PASSES_WITH"


class InjectedFault(RuntimeError):
    """The exception a test-only failing pass raises."""


class TestOnlyFailingGenerator(AdapterGenerator):
    """An `AdapterGenerator` whose passes raise when a description holds `marker` (FAKE fault)."""

    def __init__(self, generator: AdapterGenerator, marker: str) -> None:
        super().__init__(generator.hypernet, generator.encoder, generator.fingerprint, generator.settings)
        self.marker = marker

    def generate_from_embeddings(self, texts: Sequence[str], embeddings: torch.Tensor) -> list[LoRAAdapter | T2LError]:
        if any(self.marker in text for text in texts):
            raise InjectedFault(f"test-only fault injected by {FAIL_PASSES_ENV} into a pass of {len(texts)} descriptions")
        return super().generate_from_embeddings(texts, embeddings)


def with_test_faults(generator: AdapterGenerator) -> AdapterGenerator:
    """The generator, wrapped to fail marked passes when the test-only variable is set."""
    marker = os.environ.get(FAIL_PASSES_ENV)
    return generator if not marker else TestOnlyFailingGenerator(generator, marker)
