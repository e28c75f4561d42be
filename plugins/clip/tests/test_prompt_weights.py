"""Prompt weighting as AUTOMATIC1111's web UI reads it: its parse results, and its arithmetic on the embeddings.

The expected parse trees below were derived by hand from the web UI's modules/prompt_parser.py
(parse_prompt_attention, commit 0674fab): "(" and "[" open a bracket at the next piece; ")" multiplies every piece
since its "(" by 1.1, "]" since its "[" by 1/1.1, ":W)" by W; brackets left open close at the end; a closing
bracket with no opening one, and ":" outside a weight, are text; "\\(" and friends are the literal character;
BREAK becomes the piece ("BREAK", -1) that brackets scale like any other; equal neighbouring weights merge. The
first seven rows are the examples that function's own docstring gives.
"""

from __future__ import annotations

import pytest
import torch
from difframe_clip import CLIPTextConditioner
from difframe_clip.prompt_weights import has_weighting, parse_weighted_prompt

WEB_UI_PARSES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.3 * 1.1 * 1.1),
            (" ", 1.1),
            ("on", 1.1 / 1.1),
            (" a ", 1.1),
            ("hill", 0.5 * 1.1),
            (", sun, ", 1.1),
            ("sky", 1.1 * 1.1 * 1.1 * 1.1),
            (".", 1.1),
        ],
    ),
    ("", [("", 1.0)]),
    ("((word))", [("word", 1.1 * 1.1)]),
    ("[word]", [("word", 1 / 1.1)]),
    ("[[word]]", [("word", 1 / 1.1 / 1.1)]),
    ("(word:1.3)", [("word", 1.3)]),
    ("(word: 0.7 )", [("word", 0.7)]),  # spaces around the number (web UI 1.6 and later)
    ("a cat) and]", [("a cat) and]", 1.0)]),  # unmatched closing brackets are text
    ("ratio 16:9", [("ratio 16:9", 1.0)]),
    ("a \\\\ b", [("a \\ b", 1.0)]),
    ("a cat BREAK a dog", [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),  # a bracketed BREAK is text, as there
    ("BREAKFAST", [("BREAKFAST", 1.0)]),
]


@pytest.mark.parametrize(("prompt", "expected"), WEB_UI_PARSES)
def test_parse_matches_the_web_ui(prompt, expected):
    parsed = parse_weighted_prompt(prompt)
    assert [text for text, _ in parsed] == [text for text, _ in expected]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in expected], rel=1e-12)


def test_bad_weight_is_a_clear_error():
    with pytest.raises(ValueError, match="not a number"):
        parse_weighted_prompt("(word:1.2.3)")


def test_plain_prompts_have_no_weighting():
    assert not has_weighting("a photo of a cat, 16:9")
    assert has_weighting("a (cat)") and has_weighting("a BREAK b")


@pytest.fixture(scope="module")
def plain(model_root):
    return CLIPTextConditioner.from_pretrained(model_root, weighting=False)


def test_prompt_without_syntax_is_exactly_the_plain_embedding(conditioner, plain):
    prompts = ["a photo of a cat", "ratio 16:9, " * 40]
    assert torch.equal(conditioner.encode(prompts), plain.encode(prompts))


def test_weights_scale_token_embeddings_then_restore_the_mean(conditioner, plain):
    weighted = conditioner.encode("a (red:1.5) fox")[0]
    ids = plain.tokenize("a red fox")
    assert torch.equal(conditioner.tokenize("a (red:1.5) fox"), ids)  # the same tokens: only weights differ
    base = plain.encode("a red fox")[0].double()
    red = 2  # BOS, "a", "red"
    multipliers = torch.ones(77, dtype=torch.float64)
    multipliers[red] = 1.5
    expected = base * multipliers[:, None]
    expected = expected * (base.mean() / expected.mean())
    torch.testing.assert_close(weighted.double(), expected, rtol=1e-6, atol=1e-6)
    assert weighted.double().mean().item() == pytest.approx(base.mean().item(), abs=1e-6)  # float32 rounding


def test_break_starts_a_new_chunk(conditioner, plain):
    ids = conditioner.tokenize("a cat BREAK a dog")
    assert ids.shape == (1, 2, 77)
    assert torch.equal(ids[:, 0], plain.tokenize("a cat")[:, 0])
    assert torch.equal(ids[:, 1], plain.tokenize("a dog")[:, 0])
    assert plain.tokenize("a cat BREAK a dog").shape == (1, 1, 77)  # weighting off: the word "break"


def test_weights_over_long_prompts_follow_their_tokens(conditioner):
    long = ", ".join(f"word{i}" for i in range(40)) + ", (last:1.4)"
    ids, weights = conditioner.tokenize_weighted(long)
    assert ids.shape[1] >= 2
    heavy = weights == 1.4
    assert heavy.sum() >= 1 and heavy[0, 0].sum() == 0  # only in the chunk that holds "last"
    assert torch.equal(ids[heavy], torch.tensor(conditioner.tokenizer("last", add_special_tokens=False).input_ids))


def test_escaped_brackets_are_text(conditioner, plain):
    assert torch.equal(conditioner.encode("a \\(cat\\)"), plain.encode("a (cat)"))
