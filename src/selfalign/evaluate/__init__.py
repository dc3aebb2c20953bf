"""`selfalign evaluate`: offline measurements of a finished run (issue 7), one module per question.

Each question is answered on data the run never trained on (`heldout.py`):

1. **Curation quality** (`rater_eval.py`): held-out human-written pairs (good) and planted bad
   pairs made from them (`corruptions.py`: swapped instruction, response cut to its first
   sentence, unrelated response, web boilerplate appended, an instruction written by the untrained
   base model, a response in another language), plus a human-judged set (`human.py`: best- vs
   last-ranked OASST1 replies), rated exactly as curation rates with every curation mode and a
   response-length baseline; ROC AUC overall, per kind and on the human set, precision/recall of
   "kept" by threshold, mean score per kind (`stats.py`).
2. **Backward model** (`backward_eval.py`): NLL per token of the true instruction given the
   response, base model vs backward adapter, and a few generated instructions.
3. **Instruction recovery** (`recovery.py`): on the run's augmented pairs, whose true LIMA
   prompts are known, NLL/token of the true prompt and ROUGE-L F1 of the generated one, base
   model vs backward adapter, and the share of each augmentation status.
4. **Forward model** (`judge.py`): pairwise win rate vs the base model (and M2 vs M1), judged by
   the rater in both orders, with Wilson intervals.

`run.evaluate_run` runs all four with the settings of the config's `evaluate` section and writes
`<run>/eval/evaluation.json` (records beside it: `heldout.jsonl`, `rated_<set>_<mode>.jsonl`,
`recovery.jsonl`, `responses.jsonl`, `judgments.jsonl`; an interrupted evaluation resumes, reusing
what matches its inputs, `resume.py`); the report side
(`selfalign.report_eval.write_eval_report`) renders `report.html`, PNG plots and the "## Evaluation"
section of `report.md`.
"""

from selfalign.evaluate.backward_eval import evaluate_backward, nll_base_vs_backward, target_nll
from selfalign.evaluate.corruptions import (
    CORRUPTION_KINDS,
    GOOD,
    TEXT_KINDS,
    assign_kinds,
    boilerplate_text,
    eval_pairs,
    first_sentence,
    plant_corruptions,
)
from selfalign.evaluate.heldout import load_heldout
from selfalign.evaluate.human import load_human_pairs, ranked_pairs
from selfalign.evaluate.judge import (
    comparisons,
    forward_models,
    judge_pairwise,
    model_responses,
    pairwise_outcome,
    parse_verdict,
    summarize_outcomes,
)
from selfalign.evaluate.rater_eval import (
    LENGTH,
    REPORT_THRESHOLDS,
    curation_metrics,
    eval_modes,
    evaluate_curation,
    foreign_responses,
    length_scores,
    mode_metrics,
    planted_set,
    rater_spec,
)
from selfalign.evaluate.recovery import (
    evaluate_recovery,
    lcs_length,
    recovery_pairs,
    rouge_l_f1,
    true_prompts,
)
from selfalign.evaluate.run import check_run, evaluate_run
from selfalign.evaluate.stats import length_stats, precision_recall, roc_auc, wilson_interval
from selfalign.report import replace_section
from selfalign.report_eval import write_eval_report

__all__ = [
    "CORRUPTION_KINDS", "GOOD", "LENGTH", "REPORT_THRESHOLDS",
    "TEXT_KINDS", "assign_kinds", "boilerplate_text", "check_run", "eval_modes", "foreign_responses",
    "length_scores", "load_human_pairs", "mode_metrics", "planted_set", "ranked_pairs",
    "comparisons", "curation_metrics", "eval_pairs", "evaluate_backward", "evaluate_curation", "evaluate_recovery",
    "evaluate_run", "lcs_length", "nll_base_vs_backward", "recovery_pairs", "rouge_l_f1", "true_prompts",
    "first_sentence", "forward_models", "judge_pairwise", "length_stats", "load_heldout", "model_responses",
    "pairwise_outcome", "parse_verdict", "plant_corruptions", "precision_recall", "rater_spec",
    "replace_section", "roc_auc", "summarize_outcomes", "target_nll", "wilson_interval", "write_eval_report",
]
