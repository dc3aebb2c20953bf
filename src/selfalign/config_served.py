"""The `served` config section: an OpenAI-compatible endpoint (vllm serve, transformers serve,
llama.cpp server, Ollama, a hosted API) and which model roles run on it (`http_engine.py`,
docs/served-models.md). Imported by config.py; kept here so config.py stays short."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from selfalign.config_types import NonNegFloat, PosFloat, PosInt, Text, _int_range

# the model roles: backward = augmentation (instructions from responses), rater = curation,
# judge = `evaluate`'s rater and pairwise judge, forward = the sample responses of a run
Role = Literal["backward", "rater", "judge", "forward"]
ROLES: tuple[str, ...] = ("backward", "rater", "judge", "forward")


class ServedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # the roles whose requests go to the endpoint; [] = none (all run in this process)
    roles: list[Role] = []
    base_url: Text = "http://127.0.0.1:8000/v1"  # the endpoint's OpenAI base URL (ends in /v1)
    model: Text = "default"  # the model name requests carry (a served LoRA's name, e.g. "backward")
    # per-role model names that replace `model`, e.g. {backward: backward, rater: gpt-4o-mini}
    models: dict[Role, Text] = {}
    # the NAME of the environment variable holding the API key (the key itself is never printed,
    # written or logged); unset or empty: no key is sent (local servers)
    api_key_env: Text = "OPENAI_API_KEY"
    # completions: the rendered prompt text (chat template applied here, as the local engines
    # do); chat: the messages, the server applies its chat template (hosted chat models)
    api: Literal["completions", "chat"] = "completions"
    # tokenizer that renders prompts and cuts them to fit: a model spec as models.base;
    # null = the role's local model (models.base or models.rater)
    tokenizer: Text | None = None
    context: PosInt | None = None  # the served model's context in tokens; null = the tokenizer model's
    concurrency: PosInt = 8  # requests in flight
    timeout: PosFloat = 120.0  # seconds per request
    max_retries: _int_range(0, 100) = 5  # retries of a request on 429, 5xx, timeouts, dropped connections
    max_retry_wait: PosFloat = 60.0  # seconds: the longest backoff or Retry-After honoured
    logprobs: bool = True  # logprob mode: read the score from the server's top_logprobs when returned
    top_logprobs: _int_range(1, 20) = 5  # how many alternatives to ask for (OpenAI's completions: <= 5)
    # generate mode: ask for constrained output matching "... Score: N" (vLLM's structured outputs,
    # a `structured_outputs: {regex: ...}` field; servers without it answer 400/422)
    guided: bool = False
    price_input: NonNegFloat | None = None  # price per million prompt tokens (the ledger's cost); null = none
    price_output: NonNegFloat | None = None  # price per million completion tokens


def role_of(stage: str | None) -> str | None:
    """The role of a stage's engine: augment -> backward, curate -> rater, responses -> forward."""
    return {"augment": "backward", "curate": "rater", "responses": "forward", "judge": "judge"}.get(stage or "")


# what a served stage's outputs depend on (its key hashes them); not the throughput, retries, prices
SERVED_READS = ("base_url", "model", "models", "api", "tokenizer", "context", "logprobs", "top_logprobs", "guided")


def served_reads(cfg: object, stage: str) -> dict[str, object]:
    """{"served": the settings its outputs depend on} when `stage`'s role is served, else {} (the
    keys of runs without a served model are unchanged)."""
    s = cfg.served  # type: ignore[attr-defined]
    role = role_of(stage)
    if role not in s.roles:
        return {}
    return {"served": {k: getattr(s, k) for k in SERVED_READS} | {"role_model": s.models.get(role, s.model)}}
