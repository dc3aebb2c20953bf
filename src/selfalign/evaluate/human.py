"""A human-judged set: best- vs worst-ranked OASST1 replies to the same prompt.

OASST1 volunteers ranked the sibling assistant replies of each prompt (`rank` 0 = best). From the
OASST1 validation trees (`en_validation_messages.jsonl`, the file `evaluate.human` names; one message
a line with the HF fields), for
each prompter message with at least 2 assistant replies that are not `deleted` and have a rank:

- (prompt, best-ranked reply) is labelled good (the lowest rank, 0 unless that reply was deleted);
- (prompt, last-ranked reply) is labelled bad.

Split rule: every tree of the validation split is eligible (the run trains on Guanaco, which comes
from OASST1 *train*), except prompts whose text (case and whitespace ignored) is in `exclude`: the
evaluation passes its held-out instructions, so a root prompt that is already a held-out good pair
is not rated twice. Follow-up prompts (not tree roots) count too and are rated without the earlier
turns, as curation rates single turns. Prompts are ordered by sha256(seed, message id) and the
first `n` (`evaluate.n_human`, default 40, so 80 rated pairs) are taken: the same on every machine.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

from selfalign.evaluate.corruptions import normalized
from selfalign.io import DataError, jsonl_rows
from selfalign.records import AugmentedPair

HUMAN_GOOD, HUMAN_BAD = "human_good", "human_bad"


def ranked_pairs(messages: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(prompt, best reply, worst reply) for every prompter message with >= 2 ranked, kept replies."""
    children: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in messages:
        if m.get("parent_id"):
            children[m["parent_id"]].append(m)
    out = []
    for m in messages:
        if m.get("role") != "prompter" or m.get("deleted") or not str(m.get("text", "")).strip():
            continue
        replies = [c for c in children.get(m["message_id"], [])
                   if c.get("role") == "assistant" and not c.get("deleted") and isinstance(c.get("rank"), int)
                   and str(c.get("text", "")).strip()]
        if len(replies) < 2:
            continue
        replies.sort(key=lambda c: c["rank"])
        best, worst = replies[0], replies[-1]
        if best["rank"] == worst["rank"] or normalized(best["text"]) == normalized(worst["text"]):
            continue
        out.append((m, best, worst))
    return out


def load_human_pairs(
    path: str | Path, n: int = 40, seed: int = 0, exclude: set[str] | None = None
) -> tuple[list[AugmentedPair], dict[str, Any]]:
    """Up to `n` (good, bad) pairs of pairs, goods first then bads in the same order, and info.

    Sources are `human_good` / `human_bad`; source ids `human-<message id>-good|bad`. `exclude`
    holds normalized prompts to skip (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: not found (human-judged set); pass the OASST1 messages file with --human PATH "
                        "or set evaluate.human")
    messages = []
    for k, row in jsonl_rows(path):
        if not isinstance(row, dict) or not {"message_id", "parent_id", "role", "text"} <= row.keys():
            raise DataError(f"{path}:{k}: not an OASST1 message (needs message_id, parent_id, role, text)")
        messages.append(row)
    exclude = exclude or set()
    found = ranked_pairs(messages)
    eligible = [t for t in found if normalized(t[0]["text"]) not in exclude]

    def key(t: tuple[dict[str, Any], ...]) -> str:
        return hashlib.sha256(f"{seed}:{t[0]['message_id']}".encode()).hexdigest()

    picked = sorted(eligible, key=key)[:n]
    good = [AugmentedPair(p["text"], b["text"], f"human-{p['message_id']}-good", HUMAN_GOOD, "", "ok") for p, b, _ in picked]
    bad = [AugmentedPair(p["text"], w["text"], f"human-{p['message_id']}-bad", HUMAN_BAD, "", "ok") for p, _, w in picked]
    info = {"path": str(path), "prompts_with_ranked_replies": len(found), "excluded_as_heldout": len(found) - len(eligible),
            "n_prompts": len(picked), "roots": sum(1 for p, _, _ in picked if not p.get("parent_id")),
            "rule": "every validation tree; good = best-ranked kept reply, bad = last-ranked kept reply; "
                    "prompts ordered by sha256(seed:message_id); held-out instructions excluded"}
    return good + bad, info
