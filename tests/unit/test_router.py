"""The embedding router: library checks, decisions, calibration, with the real MiniLM encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from t2l_vllm.router import (
    EmbeddingRouter,
    RouterConfigError,
    RouterSettings,
    TaskIndex,
    TaskLibrary,
    fit_threshold,
    load_labelled,
    query_of_request,
)
from t2l_vllm.router.index import ExactScan, InvertedFile

SMALL = {
    "threshold": 0.25,
    "fallback": "query",
    "tasks": [
        {"name": "math", "descriptions": ["Solve arithmetic word problems.", "Do maths."],
         "examples": ["Tom has 3 apples and buys 4 more. How many?", "What is 12 times 7?", "A train goes 60 km/h for 2 hours; how far?"]},
        {"name": "french", "descriptions": ["Translate English text into French."],
         "examples": ["Translate to French: the cat sleeps.", "How do you say 'good morning' in French?"]},
        {"name": "sentiment", "descriptions": ["Classify a review as positive or negative."],
         "examples": ["This movie was a waste of time.", "I loved the food and the staff were lovely!"]},
    ],
}


@pytest.fixture(scope="module")
def small_router():
    return EmbeddingRouter(TaskLibrary.from_dict(SMALL))


def test_queries_go_to_their_task_and_use_its_first_description(small_router):
    math, french, review = small_router.route(
        ["If I have 10 pears and eat 3, how many are left?", "Please translate 'where is the station' to French", "What a waste of time, I hated this movie."]
    )
    assert (math.task, math.description) == ("math", "Solve arithmetic word problems.")
    assert french.task == "french" and review.task == "sentiment"
    assert math.score >= small_router.threshold


def test_off_topic_query_falls_back_to_the_query_itself(small_router):
    (decision,) = small_router.route(["  Who painted   the Mona Lisa?  "])
    assert decision.task is None and decision.fallback == "query"
    assert decision.description == "Who painted the Mona Lisa?"
    assert decision.label == "fallback:query"


def test_base_fallback_and_overrides(small_router):
    base = EmbeddingRouter(small_router.library, RouterSettings(fallback="base", threshold=5.0), encoder=small_router.encoder)
    (decision,) = base.route(["What is 12 times 7?"])
    assert decision.task is None and decision.description is None and decision.fallback == "base"


def test_query_fallback_is_cut_to_the_description_limit(small_router):
    router = EmbeddingRouter(small_router.library, RouterSettings(threshold=2.0), encoder=small_router.encoder, max_description_chars=10)
    assert router.route(["abcdefghijklmnop"])[0].description == "abcdefghij"


def test_two_stage_search_matches_exhaustive_scoring():
    torch.manual_seed(0)
    centres = torch.randn(500, 32)
    owners = torch.arange(3000) % 500
    entries = torch.nn.functional.normalize(centres[owners] + 0.7 * torch.randn(3000, 32), dim=-1)
    queries = torch.nn.functional.normalize(centres[:40] + 0.7 * torch.randn(40, 32), dim=-1)
    exhaustive = TaskIndex(entries, owners, 500, top_k=3, shortlist=10_000, scoring="topk").scores(queries)
    shortlisted = TaskIndex(entries, owners, 500, top_k=3, shortlist=64, scoring="topk").scores(queries)
    agree = (exhaustive[0] == shortlisted[0]).float().mean()
    assert agree >= 0.95
    same = exhaustive[0] == shortlisted[0]
    torch.testing.assert_close(exhaustive[1][same], shortlisted[1][same])


CROWDED_TASKS = 12_000  # above EXACT_SCAN_TASKS, so the index searches an inverted file


@pytest.fixture(scope="module")
def crowded():
    """A seeded library shaped like the benchmark's: 30 crowds of 400 tasks whose centroids
    differ by a few thousandths in cosine, so only a search that scans a query's whole
    crowd finds the exact best. Entries (48,000, 64), owners (48,000,), queries (300, 64)."""
    generator = torch.Generator().manual_seed(0)
    dim, crowds = 64, 30

    def noise(n: int, scale: float) -> torch.Tensor:
        return scale * torch.randn(n, dim, generator=generator) / dim**0.5

    unit = torch.nn.functional.normalize
    centres = unit(torch.randn(crowds, dim, generator=generator), dim=-1)
    tasks = unit(centres[torch.arange(CROWDED_TASKS) % crowds] + noise(CROWDED_TASKS, 0.1), dim=-1)
    owners = torch.arange(CROWDED_TASKS).repeat_interleave(4)
    entries = unit(tasks[owners] + noise(len(owners), 0.35), dim=-1)
    queries = unit(centres[torch.randint(crowds, (300,), generator=generator)] + noise(300, 1.0), dim=-1)
    return entries, owners, queries


def test_large_index_returns_the_exact_scans_task_on_a_seeded_library(crowded):
    entries, owners, queries = crowded
    index = TaskIndex(entries, owners, CROWDED_TASKS, top_k=3, shortlist=64)
    assert isinstance(index.centroid_search, InvertedFile)
    exact = (queries @ index.centroids.T).topk(2, dim=-1)
    best, first, second = index.scores(queries)
    agree = best == exact.indices[:, 0]
    assert agree.float().mean() >= 0.99
    torch.testing.assert_close(first[agree], exact.values[agree, 0])  # exact cosines, not the codes' estimates
    same_runner_up = agree & torch.isclose(second, exact.values[:, 1])  # so the router's confidence is the exact scan's
    assert same_runner_up.float().mean() >= 0.99
    one_list = InvertedFile(index.centroids, probed_fraction=0, min_probes=1)  # a hard library: one list misses often
    assert (one_list.search(queries, 2)[1][:, 0] == exact.indices[:, 0]).float().mean() < 0.9


def test_large_topk_index_shortlists_through_the_inverted_file(crowded):
    entries, owners, queries = crowded
    index = TaskIndex(entries, owners, CROWDED_TASKS, top_k=3, shortlist=64, scoring="topk")
    approximate = index.scores(queries)
    index.centroid_search = ExactScan(index.centroids)
    exact = index.scores(queries)
    agree = approximate[0] == exact[0]
    assert agree.float().mean() >= 0.99
    torch.testing.assert_close(approximate[1][agree], exact[1][agree])


def test_fit_threshold_maximises_accuracy():
    best = [("a", 0.9), ("b", 0.8), ("a", 0.3), ("b", 0.2), ("a", 0.6)]
    labels = ["a", "b", None, None, "b"]  # the 0.6 query is mislabelled by the router either way
    threshold, accuracy = fit_threshold(best, labels)
    assert 0.3 < threshold < 0.8
    assert accuracy == pytest.approx(0.8)


def test_query_of_request():
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "first"},
                         {"role": "assistant", "content": "ok"}, {"role": "user", "content": [{"type": "text", "text": "last"}]}]}
    assert query_of_request(chat) == "last"
    assert query_of_request({"prompt": "complete me"}) == "complete me"
    assert query_of_request({"prompt": ["only one"]}) == "only one"
    assert query_of_request({"prompt": [1, 2, 3]}) is None
    assert query_of_request({"messages": [{"role": "system", "content": "x"}]}) is None


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "library.yaml"
    path.write_text(text)
    return path


GOOD_TASK = "  - name: t\n    descriptions: [\"d\"]\n    examples: [\"e\"]\n"


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("tasks: [\n", "not valid YAML"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("threshold: 0.5\n", "`tasks` must be a non-empty list"),
        ("tasks:\n  - descriptions: [\"d\"]\n    examples: [\"e\"]\n", "task #1 has no `name`"),
        ("tasks:\n" + GOOD_TASK + GOOD_TASK, "task `t` appears twice"),
        ("tasks:\n  - name: t\n    examples: [\"e\"]\n", "task `t` needs `descriptions`"),
        ("tasks:\n  - name: t\n    descriptions: [\"d\"]\n    examples: []\n", "task `t` needs `examples`"),
        ("tasks:\n  - name: t\n    descriptions: [\"  \"]\n    examples: [\"e\"]\n", "task `t`: descriptions[0] is empty"),
        ("tasks:\n  - name: t\n    descriptions: [3]\n    examples: [\"e\"]\n", "task `t`: descriptions[0] must be a string, got int"),
        ("threshold: high\ntasks:\n" + GOOD_TASK, "`threshold` must be a number"),
        ("fallback: guess\ntasks:\n" + GOOD_TASK, "`fallback` must be one of"),
        ("tasks:\n  - name: t\n    descriptions: [\"d\"]\n    examples: [\"e\"]\n    colour: red\n", "task `t` has unknown field(s) ['colour']"),
    ],
)
def test_bad_library_files_name_the_file_task_and_problem(tmp_path, text, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(RouterConfigError) as err:
        TaskLibrary.load(path)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_unreadable_library_file(tmp_path):
    with pytest.raises(RouterConfigError, match="cannot read it"):
        TaskLibrary.load(tmp_path / "missing.yaml")


def test_write_threshold_keeps_the_rest_of_the_file(tmp_path):
    path = _write(tmp_path, "# my tasks\nthreshold: 0.1\nfallback: base\ntasks:\n" + GOOD_TASK)
    TaskLibrary.load(path).write_threshold(0.4321)
    text = path.read_text()
    assert text.startswith("# my tasks\nthreshold: 0.4321\n") and "fallback: base" in text
    assert TaskLibrary.load(path).threshold == pytest.approx(0.4321)


@pytest.mark.parametrize(
    "line,fragment",
    [("{not json", ":2: not valid JSON"), ('{"query": "x"}', ":2: expected"), ('{"query": "x", "task": "nope"}', ":2: task `nope` is not in the library")],
)
def test_bad_labelled_lines_name_file_and_line(tmp_path, line, fragment):
    path = tmp_path / "labelled.jsonl"
    path.write_text(json.dumps({"query": "ok", "task": None}) + "\n" + line + "\n")
    with pytest.raises(RouterConfigError, match=fragment):
        load_labelled(path, TaskLibrary.from_dict(SMALL))


def test_nearest_tasks_are_ranked_by_cosine_and_name_the_closest_first():
    from t2l_vllm.router import EmbeddingRouter, RouterSettings

    router = EmbeddingRouter.from_settings(RouterSettings())
    nearest = router.nearest_tasks("Translate English sentences into German.", 3)
    assert len(nearest) == 3 and nearest[0][0] == "translation_en_de"
    assert [score for _, score in nearest] == sorted((score for _, score in nearest), reverse=True)


def test_a_task_may_name_a_trained_adapter_folder_relative_to_its_library(tmp_path, generator):
    from t2l_vllm.router.library import TaskLibrary

    generator.generate(["A trained LoRA."])[0].save_peft(tmp_path / "loras" / "shout")
    path = tmp_path / "library.yaml"
    path.write_text("tasks:\n  - {name: shout, descriptions: [Uppercase.], examples: [HELLO], adapter: loras/shout}\n"
                    "  - {name: other, descriptions: [Other.], examples: [x]}\n")
    library = TaskLibrary.load(path)
    assert library.trained() == {"shout": str((tmp_path / "loras" / "shout").resolve())}
    (tmp_path / "loras" / "shout" / "adapter_model.safetensors").unlink()
    with pytest.raises(RouterConfigError, match="not a PEFT adapter folder .missing adapter_model.safetensors"):
        TaskLibrary.load(path)
