"""Peak memory of one huge response (issue 25): tokenized whole (before) vs cut by characters
first (after, `prompts.fit_prompt` / `clip_chars`), and reading a file whose one line is huge
(`readers.MAX_ROW_BYTES`: the row is a counted reject, never decoded or parsed).

Each measurement runs in a fresh process; the number is that process's peak resident memory
(ru_maxrss) less the peak after the imports and the tokenizer load (the baseline).

    python benchmarks/huge_row.py --mb 20 --tokenizer smollm2      # 'before' grows with --mb: keep it small
    python benchmarks/huge_row.py --mb 200 --skip-before           # the issue's 200 MB row, after the fix only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys
mode, mb, tok_spec, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
from selfalign.models import load_tokenizer, resolve_model
from selfalign.prompts import fit_prompt
from selfalign.records import RejectLog
from selfalign.unlabelled import load_unlabelled
tok = load_tokenizer(resolve_model(tok_spec, "~/.cache/selfalign"))
tok("warm up", add_special_tokens=False)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if mode in ("before", "after"):
    text = "All work and no play makes a dull answer. " * (mb * (1 << 20) // 42)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the row itself is in memory in both
    if mode == "before":  # what fit_prompt did before: the whole text through the tokenizer
        ids = tok(text, add_special_tokens=False)["input_ids"]
        out = tok.decode(ids[:1024], skip_special_tokens=True)
    else:
        out, cut = fit_prompt(tok, lambda t: t, text, 1024, 2048)
else:  # reading a file whose one row is huge
    rejects = RejectLog()
    load_unlabelled(path, rejects=rejects)
    out = rejects.summary()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mode": mode, "mb": mb, "extra_peak_mb": round((peak - base) / 1024, 1),
                  "peak_mb": round(peak / 1024, 1), "out": str(out)[:80]}))
"""


def measure(mode: str, mb: int, tok: str, path: str) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, mode, str(mb), tok, path], capture_output=True, text=True)
    if r.returncode:
        return {"mode": mode, "mb": mb, "error": r.stderr.strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=20, help="size of the huge response in MB")
    ap.add_argument("--tokenizer", default="smollm2", help="a model spec whose tokenizer is used")
    ap.add_argument("--skip-before", action="store_true", help="do not measure the whole-text tokenization")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "huge.jsonl"
        with open(f, "w") as fh:
            fh.write(json.dumps({"conversations": ["q", "a fine short answer"]}) + "\n")
            fh.write('{"conversations": ["Tell me everything.", "' + "x" * (a.mb << 20) + '"]}\n')
        modes = ["after", "read"] if a.skip_before else ["before", "after", "read"]
        rows = [measure(m, a.mb, a.tokenizer, str(f)) for m in modes]
    for r in rows:
        print(json.dumps(r))
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
