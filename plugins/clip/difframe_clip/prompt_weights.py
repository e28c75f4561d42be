"""Prompt weighting as AUTOMATIC1111's web UI reads it (the UI that made the syntax popular).

``(text)`` multiplies the attention weight of ``text`` by 1.1, ``((text))`` by 1.1 * 1.1, ``(text:1.3)`` by 1.3,
``[text]`` divides it by 1.1; ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are the literal characters; a bracket
left open applies to the end of the prompt, an unmatched closing one is plain text; the word ``BREAK`` ends the
current 75-token chunk. Neighbouring pieces of equal weight are merged, so the pieces are exactly those the web UI
tokenizes one by one.

How the weights are used (by CLIPTextConditioner): every token carries its piece's weight; each 77-token chunk's
embedding is multiplied token by token by those weights, then rescaled so that its mean equals the mean it had
before (the web UI's arithmetic). A prompt without weighting syntax has every weight 1, and the embedding is left
untouched.
"""

from __future__ import annotations

import re

BREAK = ("BREAK", -1.0)  # the piece that ends a chunk (the web UI's marker)
ROUND, SQUARE = 1.1, 1 / 1.1

_TOKENS = re.compile(
    r"""
    \\[()\[\]\\]         # an escaped bracket or backslash: literal
    | \\                 # a lone backslash: literal
    | [(\[]              # opening brackets
    | :\s*([+-]?[.\d]+)\s*\)  # an explicit weight closing a round bracket
    | [)\]]              # closing brackets
    | [^\\()\[\]:]+      # plain text
    | :                  # a colon that is not a weight
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.DOTALL)


def parse_weighted_prompt(prompt: str) -> list[tuple[str, float]]:
    """``prompt`` -> [(text, weight)]; a BREAK is the piece ("BREAK", -1.0). "an (old) map" -> [("an ", 1.0),
    ("old", 1.1), (" map", 1.0)].

    As in the web UI, brackets around a BREAK scale its -1 too, and the piece is then the word "BREAK" with that
    (negative) weight rather than a chunk break: pasted prompts mean what they meant there."""
    pieces: list[list] = []  # [text, weight] pairs, weights multiplied in place as brackets close
    open_round: list[int] = []
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _TOKENS.finditer(prompt):
        text, weight = match.group(0), match.group(1)
        if text.startswith("\\"):
            pieces.append([text[1:], 1.0])  # a lone backslash is dropped, as in the web UI
        elif text == "(":
            open_round.append(len(pieces))
        elif text == "[":
            open_square.append(len(pieces))
        elif weight is not None and open_round:
            scale_from(open_round.pop(), _number(weight, prompt))
        elif text == ")" and open_round:
            scale_from(open_round.pop(), ROUND)
        elif text == "]" and open_square:
            scale_from(open_square.pop(), SQUARE)
        else:
            for index, part in enumerate(_BREAK.split(text)):
                if index:
                    pieces.append(list(BREAK))
                pieces.append([part, 1.0])
    for start in open_round:
        scale_from(start, ROUND)
    for start in open_square:
        scale_from(start, SQUARE)
    if not pieces:
        return [("", 1.0)]
    merged = [pieces[0]]
    for piece in pieces[1:]:
        if piece[1] == merged[-1][1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(text, weight) for text, weight in merged]


def has_weighting(prompt: str) -> bool:
    """Whether ``prompt`` uses any weighting syntax: brackets, escapes or BREAK."""
    return any(c in prompt for c in "()[]\\") or _BREAK.search(prompt) is not None


def _number(text: str, prompt: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"prompt weight {text!r} is not a number in {prompt!r}; write e.g. (word:1.3)") from None
