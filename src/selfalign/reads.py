"""What each stage reads: its key is the hash of exactly these (see `manifest.stage_key`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from selfalign.config import Config
from selfalign.prompts import Templates


@dataclass(frozen=True)
class Reads:
    """What a stage reads. Its key is the hash of exactly these, plus the data files it is given
    (and, for curation, the rater's adapter): a change to any of them redoes the stage, a change
    to anything else does not."""

    config: tuple[str, ...] = ()  # dotted config keys or whole sections
    templates: tuple[str, ...] = ()  # template files, or `file.json:section`
    artifacts: tuple[str, ...] = ()  # files of earlier stages in the run directory ({i}: iteration)


_PLAIN = "templates.json:plain"  # the chat template of tokenizers without one (LLaMA-2 base)
_MODEL = ("models.base", "models.dtype", "models.load_in_4bit")
_HYGIENE = ("hygiene.benchmarks", "hygiene.include_heldout", "hygiene.keep_contaminated", "hygiene.drop_methods",
            "hygiene.ngram",
            "hygiene.min_words", "hygiene.ngram_threshold", "hygiene.embeddings", "hygiene.embedding_layer",
            "hygiene.embedding_max_tokens", "hygiene.embedding_threshold", "hygiene.minhash_threshold",
            "hygiene.minhash_perm", "data.eval_split", "forward.n_responses", *_MODEL)
STAGE_READS: dict[str, Reads] = {
    "seed": Reads(config=("data.seed", "data.seed_split", "data.seed_limit", "data.seed_english_only")),
    # hygiene: the evaluation prompts and benchmark files (evaluate.oasst1_val too) are given: their fingerprints
    "hygiene-seed": Reads(config=(*_HYGIENE,), artifacts=("seed/pairs.jsonl",)),
    "hygiene-augmented": Reads(config=(*_HYGIENE,), artifacts=("seed/pairs.jsonl", "augment/augmented.jsonl")),
    "train-backward": Reads(config=(*_MODEL, "lora", "train_backward", "run.seed"),
                            templates=("templates.json:backward", _PLAIN),
                            artifacts=("seed/pairs.jsonl", "hygiene/seed_train.jsonl")),
    "sample": Reads(config=("data.unlabelled", "data.unlabelled_split", "data.unlabelled_n", "run.seed")),
    "augment": Reads(config=(*_MODEL, "generation.instruction", "generation.max_prompt_tokens",
                             "generation.max_instruction_chars", "generation.require_request", "run.seed"),
                     templates=("templates.json:backward", _PLAIN, "request_words.json"),
                     artifacts=("backward/adapter_model.safetensors", "augment/sample.jsonl")),
    "train-m0": Reads(config=(*_MODEL, "lora", "train_forward", "forward.seed_tag", "run.seed"),
                      templates=("templates.json:forward", _PLAIN),
                      artifacts=("seed/pairs.jsonl", "hygiene/seed_train.jsonl")),
    # curation.threshold is not read: selection from the stored ratings is redone on every run
    "curate": Reads(config=("models.rater", "models.dtype", "models.load_in_4bit", "curation.mode",
                            "curation.shots", "curation.n_samples", "curation.retries", "curation.force_score",
                            "curation.temperature",
                            "curation.max_new_tokens", "curation.max_response_tokens", "run.seed"),
                    templates=("rating_prompt.txt", "rating_fewshot.json", _PLAIN,  # likelihood modes:
                               "templates.json:forward", "templates.json:role_check"),
                    artifacts=("augment/augmented.jsonl",)),
    "train-forward": Reads(config=(*_MODEL, "lora", "train_forward", "forward.seed_tag", "forward.augmented_tag",
                                   "forward.use_seed", "run.seed"),
                           templates=("templates.json:forward", _PLAIN),
                           artifacts=("seed/pairs.jsonl", "hygiene/seed_train.jsonl", "curated_{i}/data.jsonl")),
    "responses": Reads(config=(*_MODEL, "generation.response", "forward.n_responses", "forward.seed_tag",
                               "data.eval_prompts", "data.eval_split", "run.seed"),
                       templates=("templates.json:forward", _PLAIN),
                       artifacts=("forward_{i}/adapter_model.safetensors",)),
}
# Config keys no stage reads: where and how things run, not what they compute (or, for the
# threshold and iterations, handled outside the keys: see above and `final_forward`).
NOT_READ_BY_STAGES = (
    "run.out_dir", "run.force", "run.threads", "run.device", "run.memory_check", "run.device_memory_gb",
    "run.templates_dir", "models.cache_dir", "models.trust_remote_code", "data.samples_if_absent",
    "generation.backend", "generation.batch_size", "generation.max_batch_size", "generation.memory_budget_gb",
    "generation.gpu_memory_utilization", "curation.threshold", "curation.iterations", "hub.",
    # applied with the threshold after rating (labels.py); the kept data's hash retrains forward
    "curation.labels",
    "curation.max_kept", "hygiene.diversity_threshold",  # selection, redone on every run as the threshold
    # where generation runs; a run directory refuses another executor or Ray setup (but ray.address)
    "run.executor", "ray.",
    "evaluate.", "ablate.",  # settings of `selfalign evaluate` / `ablate`, read after the run
    "served.",  # read by a stage only when its role is served: `config_served.served_reads` adds them then
)


def declared_reads(stage: str, cfg: Config, templates: Templates) -> tuple[dict[str, Any], dict[str, str]]:
    """The config values (by dotted key) and template fingerprints that `stage` declares it reads
    (STAGE_READS): what its key hashes besides its input artifacts."""
    reads = STAGE_READS[stage]
    conf = cfg.to_dict()
    values = {}
    for dotted in reads.config:
        node: Any = conf
        for part in dotted.split("."):
            node = node[part]
        values[dotted] = node
    return values, {t: templates.fingerprint(t) for t in reads.templates}
