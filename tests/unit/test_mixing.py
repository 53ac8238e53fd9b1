"""Mixing descriptions: one adapter from a weighted mix of task embeddings, named by the normalised mix."""

from __future__ import annotations

import pytest
import torch

from t2l_vllm.descriptions import DescriptionMix, normalize_task
from t2l_vllm.errors import InvalidDescriptionError

UPPER, SORT = "Convert the text to uppercase.", "Sort the words alphabetically."


def weights_of(adapter) -> dict[str, torch.Tensor]:
    return dict(adapter.tensors)


def test_a_mix_with_all_weight_on_one_description_is_that_description(generator):
    single = generator.generate([UPPER])[0]
    mixed = generator.generate([[{"description": UPPER, "weight": 1}, {"description": SORT, "weight": 0}]])[0]
    assert mixed.name == single.name
    assert all(torch.equal(a, b) for a, b in zip(weights_of(mixed).values(), weights_of(single).values()))


def test_the_same_mix_gives_the_same_bytes_however_it_is_spelled(generator, tmp_path):
    a = generator.generate([[{"description": UPPER, "weight": 1}, {"description": SORT, "weight": 3}]])[0]
    b = generator.generate([[{"description": "  " + SORT, "weight": 0.75}, {"description": UPPER, "weight": 0.25}]])[0]
    assert a.name == b.name
    assert (a.save_peft(tmp_path / "a") / "adapter_model.safetensors").read_bytes() == \
           (b.save_peft(tmp_path / "b") / "adapter_model.safetensors").read_bytes()


def test_a_half_and_half_mix_differs_from_both_parts_and_lies_between_them(generator):
    upper, sort, half = generator.generate([UPPER, SORT, [{"description": UPPER, "weight": 1}, {"description": SORT, "weight": 1}]])
    assert len({upper.name, sort.name, half.name}) == 3
    key = sorted(half.tensors)[1]
    assert not torch.equal(half.tensors[key], upper.tensors[key]) and not torch.equal(half.tensors[key], sort.tensors[key])
    mixed = generator.embed([normalize_task([{"description": UPPER, "weight": 1}, {"description": SORT, "weight": 1}])])[0]
    ends = generator.embed([UPPER, SORT])
    assert torch.allclose(mixed.norm(), ends.norm(dim=-1).mean(), rtol=1e-4)  # on the encoder's sphere
    cosines = torch.nn.functional.cosine_similarity(mixed[None], ends)
    assert torch.allclose(cosines[0], cosines[1], atol=1e-4) and cosines.min() > torch.nn.functional.cosine_similarity(ends[:1], ends[1:])[0]


def test_a_mix_never_shares_a_name_with_a_plain_description(generator):
    mix = normalize_task([{"description": UPPER, "weight": 1}, {"description": SORT, "weight": 1}])
    assert isinstance(mix, DescriptionMix)
    assert generator.name_of(mix) != generator.name_of(mix.canonical())


@pytest.mark.parametrize(
    "mix,fragment",
    [
        ([], "is empty"),
        ([{"description": UPPER, "weight": -1}], "must be a finite number >= 0, got -1"),
        ([{"description": UPPER, "weight": float("nan")}], "must be a finite number >= 0"),
        ([{"description": UPPER, "weight": "1"}], 'got "1"'),
        ([{"description": UPPER, "weight": True}], "got true"),
        ([{"description": UPPER, "weight": 0}, {"description": SORT, "weight": 0}], "sum to more than 0"),
        ([{"description": "", "weight": 1}], "item 0 of the mix: the task description is empty"),
        ([{"text": UPPER}], "item 0 of the mix must be"),
        (["just a string"], "item 0 of the mix must be"),
        ([{"description": UPPER, "weight": 1e308}, {"description": SORT, "weight": 1e308}], "stay finite"),
        ([{"description": f"Task {i}.", "weight": 1} for i in range(9)], "at most 8"),
    ],
)
def test_bad_mixes_are_refused_with_the_reason(mix, fragment):
    with pytest.raises(InvalidDescriptionError, match=fragment.replace("(", r"\(")):
        normalize_task(mix)


def test_the_offline_engine_shares_one_lease_among_prompts_asking_for_the_same_mix():
    from t2l_vllm.vllm_plugin.offline import _key, _parts, _per_item

    mix = [{"description": "Reverse the text.", "weight": 0.5}, {"description": "Uppercase it.", "weight": 0.5}]
    assert _per_item(mix, 3) == [mix, mix, mix]  # one mix for every prompt, not one part per prompt
    tasks = [mix, "Reverse the text.", [dict(part) for part in mix], None]
    assert len({_key(t) for t in tasks if t is not None}) == 2
    assert list(_parts(tasks, max_distinct=2)) == [(0, 4)]
    assert list(_parts(tasks, max_distinct=1)) == [(0, 1), (1, 2), (2, 4)]


def test_the_normal_form_of_a_normal_form_is_itself(generator):
    """The cache queues normal forms and the generator normalises again: a mix must survive that."""
    mix = generator.normalize([{"description": "Reverse the text.", "weight": 1}, {"description": "Uppercase it.", "weight": 3}])
    assert generator.normalize(mix) == mix
    assert generator.generate_batch([mix])[0].name == generator.name_for(mix)
