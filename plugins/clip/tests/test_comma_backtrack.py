"""Where a long prompt's 75-token chunks are cut: the web UI's comma backtrack (modules/sd_hijack_clip.py,
option comma_padding_backtrack, default 20).

The layouts below were derived by hand from that rule: a chunk holds 75 tokens; it is closed when one more token
arrives; if that token is not a comma and the chunk's last comma sits at index j (0-based among its 75 tokens) with
75 - j <= 20, the chunk keeps tokens 0..j and the tokens after the comma open the next chunk (the rest of the
short chunk is padding, [EOS] here as in the web UI). In CLIP's vocabulary "cat", "dog", "bird" and ", " are one
token each (2368, 1929, 3329, 267), so "cat" * n + ", " + "dog" * m puts the comma at index n.
"""

from __future__ import annotations

import pytest
import torch
from difframe_clip import CLIPTextConditioner

CAT, DOG, BIRD, COMMA, BOS, EOS = 2368, 1929, 3329, 267, 49406, 49407


def words(word: str, count: int) -> str:
    return " ".join([word] * count)


def chunk(*tokens: int) -> list[int]:
    """One 77-token chunk as the text encoder gets it."""
    return [BOS, *tokens, EOS] + [EOS] * (75 - len(tokens))


@pytest.fixture(scope="module")
def conditioners(model_root):
    return {n: CLIPTextConditioner.from_pretrained(model_root, comma_backtrack=n) for n in (20, 0, 5)}


def layout(conditioner, prompt: str) -> list[list[int]]:
    return conditioner.tokenize(prompt)[0].tolist()


def test_a_comma_within_20_tokens_of_the_cut_moves_it_after_the_comma(conditioner, conditioners):
    # 60 cats, the comma at index 60 (75 - 60 = 15 <= 20), 20 dogs: the 76th token moves the 14 dogs after it
    prompt = f"{words('cat', 60)}, {words('dog', 20)}"
    expected = [chunk(*[CAT] * 60, COMMA), chunk(*[DOG] * 20)]
    assert layout(conditioner, prompt) == expected  # the default is 20, as the web UI's
    assert layout(conditioners[20], prompt) == expected
    # exactly 20 tokens from the end (index 55) still moves; 21 (index 54) does not
    assert layout(conditioner, f"{words('cat', 55)}, {words('dog', 25)}") == [
        chunk(*[CAT] * 55, COMMA),
        chunk(*[DOG] * 25),
    ]
    assert layout(conditioner, f"{words('cat', 54)}, {words('dog', 26)}") == [
        chunk(*[CAT] * 54, COMMA, *[DOG] * 20),
        chunk(*[DOG] * 6),
    ]


def test_a_comma_farther_back_or_backtrack_off_keeps_the_75_token_cut(conditioner, conditioners):
    far = f"{words('cat', 50)}, {words('dog', 30)}"  # comma at index 50: 25 tokens from the cut
    assert layout(conditioner, far) == [chunk(*[CAT] * 50, COMMA, *[DOG] * 24), chunk(*[DOG] * 6)]
    near = f"{words('cat', 60)}, {words('dog', 20)}"
    plain_cut = [chunk(*[CAT] * 60, COMMA, *[DOG] * 14), chunk(*[DOG] * 6)]
    assert layout(conditioners[0], near) == plain_cut  # 0 turns it off
    assert layout(conditioners[5], near) == plain_cut  # 15 tokens back is farther than 5


def test_only_a_cut_inside_the_prompt_moves(conditioner):
    # exactly 75 tokens: no token arrives after the full chunk, so nothing moves
    assert layout(conditioner, f"{words('cat', 60)}, {words('dog', 14)}") == [chunk(*[CAT] * 60, COMMA, *[DOG] * 14)]
    # the 76th token is itself a comma: the chunk stays full and the comma opens the next one
    assert layout(conditioner, f"{words('cat', 60)}, {words('dog', 14)}, bird") == [
        chunk(*[CAT] * 60, COMMA, *[DOG] * 14),
        chunk(COMMA, BIRD),
    ]
    # a short prompt with commas is one chunk, token for token
    assert layout(conditioner, "cat, dog, bird") == [chunk(CAT, COMMA, DOG, COMMA, BIRD)]


def test_break_still_ends_a_chunk(conditioner):
    # a BREAK right after a full chunk closes it (no empty chunk between), and is not a token that moves a cut
    full = f"{words('cat', 60)}, {words('dog', 14)}"
    assert layout(conditioner, f"{full} BREAK bird") == [chunk(*[CAT] * 60, COMMA, *[DOG] * 14), chunk(BIRD)]
    # a BREAK forgets the comma before it (index 60, which would be 15 back): the next chunk is cut at 75
    prompt = f"{words('cat', 60)}, dog BREAK {words('cat', 80)}"
    assert layout(conditioner, prompt) == [chunk(*[CAT] * 60, COMMA, DOG), chunk(*[CAT] * 75), chunk(*[CAT] * 5)]
    # and a moved cut in the chunk after a BREAK
    moved = f"bird BREAK {words('cat', 60)}, {words('dog', 20)}"
    assert layout(conditioner, moved) == [chunk(BIRD), chunk(*[CAT] * 60, COMMA), chunk(*[DOG] * 20)]


def test_weights_move_with_their_tokens(conditioner):
    ids, weights = conditioner.tokenize_weighted(f"{words('cat', 60)}, (dog:1.3) {words('dog', 19)}")
    assert ids[0].tolist() == [chunk(*[CAT] * 60, COMMA), chunk(*[DOG] * 20)]
    assert weights[0, 0].tolist() == [1.0] * 77
    assert weights[0, 1].tolist() == [1.0, 1.3] + [1.0] * 75  # the moved "dog" keeps its 1.3


def test_embedding_of_a_moved_chunk_is_that_of_its_tokens(conditioner):
    long = conditioner.encode(f"{words('cat', 60)}, {words('dog', 20)}")
    first = conditioner.encode(f"{words('cat', 60)},")
    second = conditioner.encode(words("dog", 20))
    assert long.shape == (1, 154, 32)
    torch.testing.assert_close(long[:, :77], first, atol=1e-6, rtol=0)
    torch.testing.assert_close(long[:, 77:], second, atol=1e-6, rtol=0)


def test_truncate_mode_and_bad_values(model_root, conditioner):
    truncating = CLIPTextConditioner.from_pretrained(model_root, long_prompts="truncate")
    prompt = f"{words('cat', 60)}, {words('dog', 20)}"
    assert layout(truncating, prompt) == [chunk(*[CAT] * 60, COMMA, *[DOG] * 14)]  # the reference's first 75
    for bad, error in ((-1, ValueError), (75, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="comma_backtrack"):
            CLIPTextConditioner(conditioner.tokenizer, conditioner.text_encoder, comma_backtrack=bad)
