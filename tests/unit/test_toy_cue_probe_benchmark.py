"""The cue probe runs end to end at a tiny scale, and its "T2L trunk" is the hypernetwork's own computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from t2l_vllm.toy import cue_probe, reproduction
from t2l_vllm.toy.wordings import INDEPENDENT
from t2l_vllm.toy.world import HELDOUT_TASKS, TRAIN_TASKS


@pytest.fixture()
def probe():
    return cue_probe


def test_a_tiny_run_writes_every_arm_with_the_spread_over_seeds(tmp_path, probe):
    args = ["--out", str(tmp_path), "--steps", "3", "--seeds", "2", "--eval-inputs", "2", "--eval-descriptions", "1",
            "--encoder-tuning-steps", "2"]
    assert probe.main(args) == 0
    arms = json.loads((tmp_path / "table.json").read_text())["arms"]
    assert set(arms) == {"shallow MLP", "T2L trunk", "T2L trunk, mixup", "T2L trunk, no residual blocks"}
    for arm, row in arms.items():
        for column in probe.COLUMNS:
            error, exact = row[column]["relative cue error"], row[column]["exact match"]
            assert 0.0 < error["min"] <= error["mean"] <= error["max"], (arm, column)
            assert 0.0 <= exact["min"] <= exact["mean"] <= exact["max"] <= 1.0, (arm, column)
        assert set(row["held-out tasks, exact match by task"]) == set(HELDOUT_TASKS)
        assert set(row[probe.BY_STYLE]) == {w.style for w in INDEPENDENT}
        assert all(0.0 <= v <= 1.0 for v in row[probe.BY_STYLE].values())


def test_seen_templates_keeps_the_first_descriptions_of_every_training_task(probe):
    every, first_two = probe.training_pairs(), probe.training_pairs(2)
    assert len(first_two) == 2 * len(TRAIN_TASKS) < len(every)
    for task in TRAIN_TASKS:
        seen = [d for t, d in every if t == task]
        assert [d for t, d in first_two if t == task] == seen[:2]


def test_seen_templates_that_is_not_positive_is_refused(probe, capsys):
    with pytest.raises(SystemExit):
        probe.main(["--seen-templates", "0"])
    assert "--seen-templates must be positive" in capsys.readouterr().err


def test_the_trunk_arm_computes_what_the_hypernetwork_does_for_layer_0_v_proj(tmp_path, probe):
    bench = probe.Bench(str(_base()), tmp_path, reproduction.Budget(examples_per_task=8, encoder_tuning_steps=2))
    cue_size = bench.cues.parts.shape[1]
    trunk = probe.T2LTrunk(bench, cue_size, seed=0).eval()
    hypernet = trunk.hypernet
    head = hypernet.heads["v_proj"]
    in_features = hypernet.shapes["v_proj"].in_features
    with torch.no_grad():
        head.weight.normal_(0, 0.02)  # any head: the hyperinit one has zero weights
        rank_0_of_B = slice(hypernet.rank * in_features, hypernet.rank * in_features + cue_size)
        trunk.head.weight.copy_(head.weight[rank_0_of_B])
        trunk.head.bias.copy_(head.bias[rank_0_of_B])
        embeddings = bench.encoder.encode(["Shift every letter 3 places forward.", "Reverse the order of the words."])
        expected = hypernet(embeddings)["v_proj"].B[:, 0, :, 0]  # layer 0, rank 0: where a cue adapter writes
        assert torch.allclose(trunk(embeddings), expected, atol=1e-5)


def _base() -> Path:
    from t2l_vllm.default_model import default_paths

    return default_paths().base_model
