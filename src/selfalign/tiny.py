"""A tiny random Llama model (model spec `tiny-random`) for smoke runs and tests.

It is built offline and deterministically: a byte-level BPE tokenizer trained on the shipped
sample data, and a 2-layer Llama with random weights, saved as a normal transformers folder.
It writes nonsense, but it exercises every code path in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

TINY = "tiny-random"
# Positions the tiny model attends to. Its 512-token byte-level vocabulary makes a rating prompt with
# three worked examples ~5k tokens long; prompts longer than this are error rows, not run.
TINY_CONTEXT = 16384

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _corpus() -> list[str]:
    here = Path(__file__).parent / "sample_data"
    texts: list[str] = []
    for name in ("seed.jsonl", "unlabelled.jsonl", "prompts.jsonl"):
        for line in (here / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts += [v for v in row.values() if isinstance(v, str)]
            texts += [c for c in row.get("conversations", []) if isinstance(c, str)]
    texts.append((Path(__file__).parent / "templates" / "rating_prompt.txt").read_text())
    return texts


def build_tokenizer(vocab_size: int = 512, chat_template: bool = True):  # noqa: ANN201
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(out_dir: Path, chat_template: bool = True, seed: int = 0,
                     tokenizer_dir: Path | None = None) -> Path:
    """Save a tiny random Llama + tokenizer at out_dir (atomically); returns out_dir.

    `tokenizer_dir`: use that tokenizer instead (e.g. the real LLaMA-2 one: vocabulary 32,000,
    context 4,096, with or without Meta's chat template) -- a tiny stand-in for LLaMA-2-7B."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    tok = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else build_tokenizer(chat_template=chat_template)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
        # its 512-token vocabulary makes long prompts (3-shot rating: ~5k tokens); LLaMA-2's is 4,096
        max_position_embeddings=4096 if tokenizer_dir else TINY_CONTEXT,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, out_dir)
    return out_dir
