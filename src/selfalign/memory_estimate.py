"""Memory estimates: the arithmetic of what a stage needs, from the model's shape and the config.

The estimate is built from the model's `config.json` fields (`Shape`) and the run config: weights
(dtype or 4-bit NF4), LoRA parameters with their gradients and AdamW states, activations for
batch x length (with or without gradient checkpointing), the fp32 logits of the loss, and the KV
cache for generation, with the prompt lengths counted with the model's tokenizer or estimated.
It is an estimate (about +-20% against measured peaks on the Llama shapes), meant to catch "this
cannot possibly fit" before minutes of loading, not to squeeze the last gigabyte.

Nothing here reads a device, loads a model or refuses a run: `selfalign.memory` does, with these
`Plan`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from selfalign.config import Config, LoraConfig, TrainConfig

GiB = 1024**3
MIN_SHARED_PREFIX = 32  # tokens; shorter shared prefixes are not worth caching (generation.py)
CUDA_CONTEXT = int(0.75 * GiB)  # CUDA context + allocator slack, ~0.5-1 GB on A100/T4
CPU_RUNTIME = int(0.75 * GiB)  # python, torch, transformers, the tokenizer: fitted on the small CPU run (docs)

# Shapes of the models the shipped configs name, so `selfalign plan` works without network.
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-2-7b-hf": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008,
                                     vocab_size=32000, num_attention_heads=32, num_key_value_heads=32,
                                     tie_word_embeddings=False, max_position_embeddings=4096),
    "meta-llama/Llama-2-13b-hf": dict(hidden_size=5120, num_hidden_layers=40, intermediate_size=13824,
                                      vocab_size=32000, num_attention_heads=40, num_key_value_heads=40,
                                      tie_word_embeddings=False, max_position_embeddings=4096),
    "meta-llama/Llama-2-70b-hf": dict(hidden_size=8192, num_hidden_layers=80, intermediate_size=28672,
                                      vocab_size=32000, num_attention_heads=64, num_key_value_heads=8,
                                      tie_word_embeddings=False, max_position_embeddings=4096),
}
for _size in ("7b", "13b", "70b"):
    KNOWN_SHAPES[f"meta-llama/Llama-2-{_size}-chat-hf"] = KNOWN_SHAPES[f"meta-llama/Llama-2-{_size}-hf"]

# Prompt tokens around the variable text when the model's tokenizer cannot be read (`selfalign plan`
# offline with a Hub id), measured with the LLaMA-2 tokenizer on the shipped templates: the rating
# prompt is ~530 tokens plus ~660 per worked example (3 shots: 2,497), the backward and forward
# templates ~30. With the tokenizer at hand the planner counts them instead.
RATING_FIXED, RATING_PER_SHOT, TEMPLATE_FIXED = 530, 660, 32


@dataclass
class Shape:
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    context: int | None = None  # max_position_embeddings

    @classmethod
    def from_config(cls, c: dict[str, Any]) -> Shape:
        try:
            h, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
            return cls(hidden=h, layers=int(c["num_hidden_layers"]),
                       intermediate=int(c["intermediate_size"]), vocab=int(c["vocab_size"]),
                       heads=heads, kv_heads=int(c.get("num_key_value_heads") or heads),
                       head_dim=int(c.get("head_dim") or h // heads),
                       tied=bool(c.get("tie_word_embeddings", False)),
                       context=int(c["max_position_embeddings"]) if c.get("max_position_embeddings") else None)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a decoder config with the usual fields ({e})") from None

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder block (Llama naming)."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def block_linear_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def n_params(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden
        return self.embedding_params + self.layers * self.block_linear_params + norms

    def kv_bytes(self, tokens: int, dtype_bytes: int) -> int:
        """KV cache of `tokens` positions (keys and values of every layer)."""
        return 2 * self.layers * tokens * self.kv_heads * self.head_dim * dtype_bytes

    def lora_params(self, lora: LoraConfig) -> int:
        shapes = self.linear_shapes()
        per_block = sum(lora.r * (a + b) for name, (a, b) in shapes.items()
                        if any(t == name or name.endswith(t) for t in lora.target_modules))
        return self.layers * per_block


@dataclass
class Plan:
    what: str
    parts: dict[str, int] = field(default_factory=dict)
    available: int | None = None
    device: str = ""
    blocker: str = ""  # a reason it cannot run whatever the total (vLLM's start-up rule)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return not self.blocker and (self.available is None or self.total <= self.available)

    def format(self) -> str:
        parts = ", ".join(f"{k} {v / GiB:.1f}" for k, v in self.parts.items() if v >= 0.05 * GiB)
        avail = f"{self.available / GiB:.1f} GiB {self.device}" if self.available else "unknown"
        return (f"{self.what}: needs ~{self.total / GiB:.1f} GiB ({parts}); available {avail}"
                + (f"; {self.blocker}" if self.blocker else ""))


def weight_bytes(shape: Shape, dtype_bytes: int, load_in_4bit: bool) -> int:
    linear = shape.layers * shape.block_linear_params
    other = shape.n_params - linear
    if load_in_4bit:  # NF4: 4 bits + one fp32 absmax per 64-weight block; the rest in the dtype
        return int(linear * (0.5 + 4 / 64)) + other * dtype_bytes
    return shape.n_params * dtype_bytes


def plan_training(shape: Shape, lora: LoraConfig, train: TrainConfig, dtype_bytes: int,
                  load_in_4bit: bool, cuda: bool, shards: int = 1) -> Plan:
    """Per process. Under FSDP (`shards` ranks) each rank holds 1/shards of the weights, LoRA
    weights, gradients and optimizer states, plus the decoder blocks being all-gathered (the one
    computing and the one prefetched); activations and logits are per rank, as with DDP."""
    b, s, h, n_layers = train.batch_size, train.max_seq_len, shape.hidden, shape.layers
    n_lora = shape.lora_params(lora)
    if train.gradient_checkpointing:  # each block's input is kept, one block recomputed at a time
        act = b * s * h * n_layers * dtype_bytes + b * s * h * 17 * dtype_bytes
    else:  # ~34 values of h per token per block (Korthikanti et al. 2022, flash/SDPA attention)
        act = b * s * h * n_layers * 17 * dtype_bytes
    parts = {
        "weights": weight_bytes(shape, dtype_bytes, load_in_4bit) // shards,
        "lora+grads+adam": n_lora * 16 // shards,  # fp32 weights, grads and two AdamW moments
        "activations": act,
        # fp32 logits, the loss's log-softmax of them, and their gradient (measured on the CPU
        # default run: two copies under-counted the training peak)
        "logits": b * s * shape.vocab * 4 * 3,
        "overhead": CUDA_CONTEXT if cuda else CPU_RUNTIME,
    }
    if not cuda:  # SDPA's math kernel on a CPU keeps each layer's attention probabilities for backward
        parts["attention"] = b * shape.heads * s * s * dtype_bytes * (1 if train.gradient_checkpointing else n_layers)
    if load_in_4bit:  # prepare_model_for_kbit_training casts the non-quantized weights (embeddings,
        # lm_head, norms) to fp32 (peft 0.17-0.21 `prepare_model_for_kbit_training`)
        parts["kbit fp32 casts"] = (shape.n_params - shape.layers * shape.block_linear_params) * (4 - dtype_bytes) // shards
    what = f"training (batch {b} x {s} tokens)"
    if shards > 1:
        parts["gathered blocks"] = 2 * shape.block_linear_params * dtype_bytes
        what = f"training (batch {b} x {s} tokens per GPU, FSDP over {shards} GPUs)"
    return Plan(what, parts)


@dataclass
class PromptTokens:
    """A generation stage's prompt, in tokens, around its variable text (the response, the
    instruction): `fixed` tokens of template and worked examples, of which `shared` open every
    prompt of the stage (computed once and cached by the hf backend), and `variable` the most
    that the variable text and the new tokens add (the cuts of the config)."""

    fixed: int
    shared: int
    variable: int
    counted: bool  # True: counted with the model's tokenizer; False: estimated

    @property
    def longest(self) -> int:
        return self.fixed + self.variable


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def prompt_tokens(cfg: Config, stage: str, tokenizer: Any = None) -> PromptTokens:
    """Token counts of a stage's prompts, from the tokenizer when given (else estimates)."""
    from selfalign.prompts import Templates

    tpl = Templates.load(cfg.run.templates_dir)

    g, cur = cfg.generation, cfg.curation
    new = cur.max_new_tokens if cur.mode == "generate" else 8  # logprob: "Score:" and one token (likelihood: none)
    variable = {
        "augment": g.max_prompt_tokens + g.instruction.max_new_tokens,
        # a response cut to max_response_tokens, an instruction the backward model wrote
        "curate": cur.max_response_tokens + g.instruction.max_new_tokens + new,
        "responses": 512 + g.response.max_new_tokens,  # a user prompt (not cut) + the response
    }[stage]
    render = {
        "augment": lambda a, b: tpl.backward_messages(a),
        "curate": lambda a, b: tpl.rating_messages(a, b, cur.shots),
        "responses": lambda a, b: tpl.forward_messages(a, cfg.forward.seed_tag),
    }[stage]
    if tokenizer is None:
        fixed = RATING_FIXED + RATING_PER_SHOT * cur.shots if stage == "curate" else TEMPLATE_FIXED
        shared = fixed - 40 if stage == "curate" and cur.shots else 0  # all but the tail after the pair
        return PromptTokens(fixed, shared, variable, counted=False)

    def ids(a: str, b: str) -> list[int]:
        return tokenizer(tpl.render_prompt(tokenizer, render(a, b)), add_special_tokens=False)["input_ids"]

    shared = _common_prefix(ids("What is x?", "x is y."), ids("Tell me about z.", "z is w."))
    return PromptTokens(len(ids("", "")), shared, variable, counted=True)


def generation_context(cfg: Config, stage: str | None, tokenizer: Any = None, context: int | None = None) -> int:
    """Longest prompt + new tokens of a generation stage (None: the longest of all of them),
    capped by the model's context: longer prompts are cut to fit it (prompts.fit_prompt)."""
    stages = [stage] if stage is not None else ["augment", "curate", "responses"]
    n = max(prompt_tokens(cfg, s, tokenizer).longest for s in stages)
    return min(n, context) if context else n


LIKELIHOOD_BATCH = 8  # rank._LIKELIHOOD_BATCH: the most sequences per scoring pass


def stage_rows(cfg: Config, stage: str | None) -> int:
    """The most prompts a generation stage has: no batch is larger (the small CPU run's augment
    of 8 rows was planned at batch 32)."""
    return {"augment": cfg.data.unlabelled_n, "curate": cfg.data.unlabelled_n,
            "responses": cfg.forward.n_responses}.get(stage or "", 1 << 30)


def cpu_attention(shape: Shape, b: int, n: int, dtype_bytes: int) -> int:
    """A forward pass's attention on a CPU: SDPA's math kernel materialises one layer's scores
    (b x heads x n x n), the copy with the mask added and the softmax of it. Measured on the default
    CPU run (2026-12-07, docs/gpu-and-colab.md "Planned vs measured"): without it the planner
    under-counted curate's peak by 25% (and augment's by 31%: not added to generation, see
    plan_generation)."""
    return b * shape.heads * n * n * dtype_bytes * 3


def plan_scoring(shape: Shape, cfg: Config, dtype_bytes: int, load_in_4bit: bool, cuda: bool,
                 lora: LoraConfig | None) -> Plan:
    """Curation by likelihood (likelihood, combined, quality): forward passes of the instruction
    prompt + the cut response (`likelihood.token_logprobs`), no KV cache kept; the full fp32
    logits of a batch, their log-softmax and the float copy dominate."""
    g = cfg.generation
    b = max(1, min(LIKELIHOOD_BATCH, g.batch_size or g.max_batch_size, stage_rows(cfg, "curate")))
    n = TEMPLATE_FIXED + g.instruction.max_new_tokens + cfg.curation.max_response_tokens + 32  # + the tail
    n = min(n, shape.context) if shape.context else n
    parts = {
        "weights": weight_bytes(shape, dtype_bytes, load_in_4bit),
        "lora": shape.lora_params(lora) * dtype_bytes if lora else 0,
        "logits": b * n * shape.vocab * 4 * 3,
        "prefill": b * n * shape.hidden * 8 * dtype_bytes,
        "overhead": CUDA_CONTEXT if cuda else CPU_RUNTIME,
    }
    if not cuda:
        parts["attention"] = cpu_attention(shape, b, n, dtype_bytes)
    return Plan(f"scoring (curate, {cfg.curation.mode}: batch {b} x {n} tokens, forward passes)", parts)


def plan_generation(shape: Shape, cfg: Config, dtype_bytes: int, load_in_4bit: bool, cuda: bool,
                    lora: LoraConfig | None, stage: str | None = None, tokenizer: Any = None) -> Plan:
    if stage == "curate" and cfg.curation.mode in ("likelihood", "combined", "quality"):
        return plan_scoring(shape, cfg, dtype_bytes, load_in_4bit, cuda, lora)
    ctx = generation_context(cfg, stage, tokenizer, shape.context)
    g = cfg.generation
    b = min(g.batch_size or g.max_batch_size, stage_rows(cfg, stage))  # auto (0) never goes above max_batch_size
    parts = {
        "weights": weight_bytes(shape, dtype_bytes, load_in_4bit),
        "lora": shape.lora_params(lora) * dtype_bytes if lora else 0,
        # every row holds the whole prompt (the shared prefix copied in) + room for the new tokens
        "kv_cache": b * shape.kv_bytes(ctx + 1, dtype_bytes),
        "prefill": b * ctx * shape.hidden * 8 * dtype_bytes + b * shape.vocab * 4 * 2,
        "overhead": CUDA_CONTEXT if cuda else CPU_RUNTIME,
    }

    # (no cpu_attention term here: it is quadratic in the longest prompt, and one over-long row,
    # which becomes an error row, would make the planner refuse the whole stage; augment's peak is
    # planned ~30% under on a CPU for it, docs/results/2026-12-07-plan-vs-measured.md)
    tokens = prompt_tokens(cfg, stage, tokenizer) if stage is not None else None
    if tokens is not None and tokens.shared >= MIN_SHARED_PREFIX:
        parts["prefix_cache"] = shape.kv_bytes(tokens.shared, dtype_bytes)  # kept on the engine
    how = "counted" if tokens is not None and tokens.counted else "estimated"
    cap = f", capped by the context {shape.context}" if shape.context and ctx == shape.context else ""
    return Plan(f"generation ({stage or 'longest stage'}, batch {b} x {ctx} tokens {how}{cap})", parts)


def plan_vllm(shape: Shape, cfg: Config, lora: LoraConfig | None, stage: str | None,
              tokenizer: Any = None) -> Plan:
    """vLLM in 16 bit (it has no bitsandbytes 4-bit): weights, LoRA slots, and the KV cache of at
    least one longest sequence, within generation.gpu_memory_utilization of the GPU."""
    ctx = generation_context(cfg, stage, tokenizer, shape.context)
    parts = {
        "weights": weight_bytes(shape, 2, False),
        "lora": shape.lora_params(lora) * 2 if lora else 0,
        "kv_cache": shape.kv_bytes(ctx, 2),
        "activations": max(ctx, 2048) * shape.hidden * 8 * 2 + 256 * shape.vocab * 4,  # profile run
        "overhead": CUDA_CONTEXT,
    }
    return Plan(f"vLLM fp16 ({stage or 'longest stage'}, {ctx} tokens)", parts)

