"""Planted bad pairs: each held-out good pair gets one corrupted copy of a known kind."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from selfalign.records import AugmentedPair, SeedPair

CORRUPTION_KINDS = ("swapped_instruction", "truncated", "unrelated_response", "boilerplate")
GOOD = "good"

# Web boilerplate by category; one variant of each category is appended (seeded choice and order).
_BOILERPLATE: dict[str, tuple[str, ...]] = {
    "navigation": (
        "Home | About Us | Blog | Contact | Privacy Policy | Terms of Service",
        "Menu: Home > Articles > Tips & Tricks > Next article >>",
        "Skip to main content. Home  News  Reviews  Deals  Forums  Sign in",
    ),
    "share": (
        "Share on Facebook | Tweet this | Pin it on Pinterest | Share on LinkedIn",
        "Did you like this post? Share it on social media and leave a comment below!",
        "Share this article: Facebook Twitter WhatsApp Email. 12 comments",
    ),
    "cookie": (
        "We use cookies to improve your experience on our website. By continuing to browse, you agree "
        "to our use of cookies. Accept all cookies | Manage preferences",
        "This site uses cookies. Read our Cookie Policy to find out more. [Got it!]",
    ),
    "footer": (
        "Subscribe to our newsletter to get the latest posts straight to your inbox!",
        "Copyright 2023 All rights reserved. Sponsored links: Best deals on laptops - click here",
        "Related posts: 10 tips you need to know | Top 5 mistakes beginners make | Read more...",
    ),
}


def _ir(pair: SeedPair | tuple[str, str]) -> tuple[str, str]:
    if isinstance(pair, SeedPair):
        return pair.instruction, pair.response
    return pair[0], pair[1]


def normalized(text: str) -> str:
    """Lower case, whitespace collapsed: two texts that differ only so count as the same."""
    return " ".join(text.split()).lower()


def first_sentence(text: str) -> str:
    """The response cut to its first sentence (or first line); a strict, shorter prefix.

    When the text is a single sentence, its first third of words is kept instead, so the cut
    always removes something.
    """
    stripped = text.strip()
    head = re.split(r"(?<=[.!?])\s+|\n+", stripped, maxsplit=1)[0].strip()
    if len(head) < len(stripped):
        return head
    words = stripped.split()
    if len(words) > 1:
        return " ".join(words[: max(1, len(words) // 3)])
    return stripped[: max(1, len(stripped) // 2)]


def boilerplate_text(rng: random.Random) -> str:
    """Web page boilerplate: navigation, social sharing, cookie banner, footer (seeded)."""
    parts = [rng.choice(v) for v in _BOILERPLATE.values()]
    rng.shuffle(parts)
    return "\n\n".join(parts)


def _other(i: int, n: int, texts: list[str], rng: random.Random) -> int:
    """Index of another pair whose text differs from pair i's (seeded)."""
    offsets = list(range(1, n))
    rng.shuffle(offsets)
    for off in offsets:
        j = (i + off) % n
        if normalized(texts[j]) != normalized(texts[i]):
            return j
    raise ValueError("plant_corruptions: every pair has the same text; nothing to swap with")


def plant_corruptions(
    pairs: Sequence[SeedPair | tuple[str, str]], seed: int, kinds: Sequence[str] = CORRUPTION_KINDS
) -> list[tuple[str, str, str]]:
    """One bad (instruction, response, kind) per good pair, in the order of `pairs`.

    Kinds are spread evenly over the pairs (a seeded shuffle of kinds repeated), so 40 pairs give
    10 of each of the 4 kinds. Deterministic for a seed:

    - `swapped_instruction`: the instruction of another pair, with the pair's own response;
    - `truncated`: the response cut to its first sentence (`first_sentence`);
    - `unrelated_response`: the response of another pair, with the pair's own instruction;
    - `boilerplate`: the response followed by navigation, "share on social media", cookie
      banner and footer text.
    """
    unknown = [k for k in kinds if k not in CORRUPTION_KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown corruption kinds {unknown}; choose from {CORRUPTION_KINDS}")
    items = [_ir(p) for p in pairs]
    n = len(items)
    if n < 2 and any(k in ("swapped_instruction", "unrelated_response") for k in kinds):
        raise ValueError("plant_corruptions needs at least 2 pairs")
    rng = random.Random(f"selfalign-corruptions:{seed}")
    assigned = [kinds[i % len(kinds)] for i in range(n)]
    rng.shuffle(assigned)
    instructions = [ins for ins, _ in items]
    responses = [resp for _, resp in items]
    out: list[tuple[str, str, str]] = []
    for i, ((ins, resp), kind) in enumerate(zip(items, assigned, strict=True)):
        if kind == "swapped_instruction":
            out.append((instructions[_other(i, n, instructions, rng)], resp, kind))
        elif kind == "unrelated_response":
            out.append((ins, responses[_other(i, n, responses, rng)], kind))
        elif kind == "truncated":
            out.append((ins, first_sentence(resp), kind))
        else:
            out.append((ins, resp.rstrip() + "\n\n" + boilerplate_text(rng), kind))
    return out


def eval_pairs(heldout: Sequence[SeedPair], seed: int) -> list[AugmentedPair]:
    """The held-out pairs (source "good") followed by one planted bad pair each (source = kind)."""
    good = [AugmentedPair(p.instruction, p.response, f"good-{i}", GOOD, "", "ok") for i, p in enumerate(heldout)]
    bad = [AugmentedPair(ins, resp, f"bad-{i}-{kind}", kind, "", "ok")
           for i, (ins, resp, kind) in enumerate(plant_corruptions(heldout, seed))]
    return good + bad
