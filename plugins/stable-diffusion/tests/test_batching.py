"""Seeds per image, prompt lists and chunking by memory budget."""

from __future__ import annotations

import pytest
from difframe_stable_diffusion.batching import (
    as_prompt_list,
    chunk_ranges,
    chunk_size_for,
    parse_bytes,
    plan_jobs,
    plan_seeds,
)
from difframe_stable_diffusion.common import split_where_changes


def test_seed_plans():
    assert plan_seeds(3, seed=10) == [10, 11, 12]
    assert plan_seeds(2, seeds=[5, 1]) == [5, 1]
    assert plan_seeds(2, seed=[5, 1]) == [5, 1]  # a list passed as seed means one per image
    random = plan_seeds(3)
    assert random[1] == random[0] + 1 or random[1] == 0
    with pytest.raises(ValueError, match="2 seeds for 3 images"):
        plan_seeds(3, seeds=[1, 2])
    with pytest.raises(ValueError, match="not both"):
        plan_seeds(1, seed=1, seeds=[1])
    with pytest.raises(ValueError, match="out of range: seeds are 0 to 4294967295"):
        plan_seeds(1, seed=-1)


def test_jobs_follow_the_reference_order():
    jobs = plan_jobs(2, 3, [0, 1, 2, 3, 4, 5])
    assert [j.prompt_index for j in jobs] == [0, 0, 0, 1, 1, 1]
    assert [j.seed for j in jobs] == [0, 1, 2, 3, 4, 5]


def test_prompt_lists():
    assert as_prompt_list("a", "prompt") == ["a"]
    assert as_prompt_list(["a", "b"], "prompt") == ["a", "b"]
    assert as_prompt_list(None, "prompt") is None
    with pytest.raises(ValueError, match="empty"):
        as_prompt_list([], "prompt")
    with pytest.raises(TypeError):
        as_prompt_list([1], "prompt")


def test_chunks():
    assert chunk_size_for(10, 100, 350) == 3
    assert chunk_size_for(10, 100, 50) == 1  # at least one image
    assert chunk_size_for(10, 100, None) == 10
    assert chunk_ranges(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert split_where_changes([(0, 4)], [77, 77, 154, 154]) == [(0, 2), (2, 4)]
    assert parse_bytes("1.5GB") == int(1.5 * 1024**3)
    assert parse_bytes("512 MiB") == 512 * 1024**2
    assert parse_bytes(1000) == 1000
    with pytest.raises(ValueError):
        parse_bytes("lots")
