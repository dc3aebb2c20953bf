import json
from pathlib import Path

import pytest
import torch
from conftest import GUANACO, need, slow_smollm2

from selfalign.backward import backward_example, backward_examples
from selfalign.config import load_config
from selfalign.forward import forward_examples
from selfalign.models import load_tokenizer
from selfalign.prompts import shipped
from selfalign.records import RatedPair, SeedPair
from selfalign.train import (
    IGNORE_INDEX,
    PadCollator,
    TrainExample,
    tokenize_example,
    tokenize_examples,
    train_lora,
)

PAIR = SeedPair("What is the boiling point of water at sea level?",
                "Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level.", "t1")


def check_mask(tok, ex: TrainExample, row: dict) -> None:
    ids, labels = row["input_ids"], row["labels"]
    prompt_ids = tok(shipped().render_prompt(tok, ex.messages), add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert ids[:n] == prompt_ids
    assert labels[:n] == [IGNORE_INDEX] * n  # no loss on the prompt
    assert labels[n:] == ids[n:]  # loss on every target token
    target_text = tok.decode(ids[n:], skip_special_tokens=True)
    assert target_text.strip() == ex.target
    assert ids[-1] == tok.eos_token_id or tok.decode(ids[-1:]).strip() in ("<|im_end|>", "</s>")


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_plain_model"])
def test_backward_masking_covers_instruction_only(fixture: str, request: pytest.FixtureRequest) -> None:
    tok = load_tokenizer(str(request.getfixturevalue(fixture)))
    ex = backward_example(PAIR)
    row = tokenize_example(tok, ex, 1024)
    check_mask(tok, ex, row)
    # the response is in the (masked) prompt, the instruction is the target
    assert PAIR.response in shipped().render_prompt(tok, ex.messages)
    assert ex.target == PAIR.instruction


def test_forward_examples_carry_the_paper_tags(tiny_model: Path) -> None:
    cfg = load_config(None)
    cur = RatedPair("Write a haiku", "Leaves fall / quietly / autumn ends", "c1", "lima", 5.0, "")
    exs = forward_examples([PAIR], [cur], cfg.forward)
    assert exs[0].messages[0] == {"role": "system", "content": "Answer in the style of an AI Assistant."}
    assert exs[1].messages[0] == {"role": "system", "content": "Answer with knowledge from web search."}
    tok = load_tokenizer(str(tiny_model))
    row = tokenize_example(tok, exs[0], 1024)
    check_mask(tok, exs[0], row)


def test_truncation_keeps_target_and_drops_hopeless(tiny_model: Path) -> None:
    tok = load_tokenizer(str(tiny_model))
    long_resp = SeedPair("Short instruction?", "word " * 2000, "t2")
    # forward: the response (target) is cut to fit, never to zero tokens
    ex = forward_examples([long_resp], [], load_config(None).forward)[0]
    row = tokenize_example(tok, ex, 128)
    assert len(row["input_ids"]) == 128 and row["truncated"]
    assert sum(x != IGNORE_INDEX for x in row["labels"]) >= 1
    # a prompt that leaves no room for the target is dropped and counted
    hopeless = TrainExample([{"role": "user", "content": "word " * 500}], "target")
    out = tokenize_examples(tok, [hopeless, ex], 64)
    assert out.dropped == {"prompt_too_long": 1} and len(out.rows) == 1
    # backward: the long response is cut inside the prompt so the instruction fits whole
    bex = backward_examples([long_resp], tok, 200)[0]
    brow = tokenize_example(tok, bex, 200)
    assert not brow["truncated"]
    check_mask(tok, bex, brow)


def test_collator_left_pads_and_keeps_only_target_logits() -> None:
    batch = PadCollator(0)([{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]},
                            {"input_ids": [5, 9], "labels": [-100, 9]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [0, 0, 5, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]]
    assert batch["logits_to_keep"] == 3  # longest target (2) + 1
    assert batch["labels"].tolist() == [[-100, 7, 8], [-100, -100, 9]]
    full = PadCollator(0, keep_logits=False)([{"input_ids": [5, 6], "labels": [-100, 6]}, {"input_ids": [5], "labels": [5]}])
    # a label on a first token can't be predicted (in the right-padded form the shift drops it)
    assert full["labels"].tolist() == [[-100, 6], [-100, -100]] and "logits_to_keep" not in full


def test_collator_loss_and_gradients_equal_right_padding_with_full_logits(tiny_model: Path) -> None:
    """Left padding + position_ids + logits for the targets only: the same loss and gradients as
    the plain right-padded batch with logits everywhere (so the speed-up changes nothing)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    feats = []
    for length, target in [(30, 5), (12, 7), (25, 3), (9, 9)]:
        ids = torch.randint(5, 200, (length,), generator=g).tolist()
        feats.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (length - target) + ids[length - target:]})
    n = max(len(f["input_ids"]) for f in feats)
    right = {"input_ids": torch.zeros(4, n, dtype=torch.long), "labels": torch.full((4, n), IGNORE_INDEX),
             "attention_mask": torch.zeros(4, n, dtype=torch.long)}
    for i, f in enumerate(feats):
        k = len(f["input_ids"])
        right["input_ids"][i, :k] = torch.tensor(f["input_ids"])
        right["labels"][i, :k] = torch.tensor(f["labels"])
        right["attention_mask"][i, :k] = 1
    results = []
    for batch in (right, PadCollator(0)(feats)):
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        results.append((out.loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None],
                        out.logits.shape[1]))
    (loss_r, grads_r, pos_r), (loss_l, grads_l, pos_l) = results
    assert pos_l == 9 < pos_r == 30  # logits for 9 positions (8 targets + 1) instead of 30
    assert torch.allclose(loss_r, loss_l, atol=1e-5)
    assert len(grads_r) == len(grads_l) > 0
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(grads_r, grads_l, strict=True))


def test_training_lowers_loss_and_adapter_loads_with_stock_peft(tiny_model: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = load_config(None, [f"models.base={tiny_model}", "train_backward.max_steps=30",
                             "train_backward.learning_rate=2e-2", "train_backward.batch_size=4",
                             "train_backward.warmup_ratio=0", "lora.r=8",
                             "lora.target_modules=[q_proj, v_proj, down_proj, lm_head]"])
    pairs = [SeedPair(f"Say the number {i} twice.", f"{i} {i}", f"s{i}") for i in range(8)]
    examples = [backward_example(p) for p in pairs]
    out = tmp_path / "adapter"
    r = train_lora(examples, out, cfg.models.model_copy(update={"base": str(tiny_model)}), cfg.lora, cfg.train_backward)
    assert r.steps == 30
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in log if "loss" in h]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    # the summary's loss: the same examples before and after training, measured apart from the log
    assert r.probe_n == 8 and r.probe_before is not None and r.probe_after < r.probe_before - 0.3
    probe_rows_ = [tokenize_example(load_tokenizer(str(tiny_model)), ex, 320) for ex in examples]
    base_model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    from selfalign.train import probe_loss

    assert probe_loss(base_model, probe_rows_, load_tokenizer(str(tiny_model)).pad_token_id) == pytest.approx(
        r.probe_before, abs=1e-3)  # "before" is the base model's loss on them
    for f in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", "training_info.json"):
        assert (out / f).is_file()
    assert not out.with_name("adapter.work").exists()  # checkpoints are cleaned up
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    model = PeftModel.from_pretrained(base, str(out))
    tok = load_tokenizer(str(tiny_model))
    row = tokenize_example(tok, examples[0], 256)
    with torch.no_grad():
        loss_trained = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])).loss
        with model.disable_adapter():
            loss_base = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])).loss
    assert loss_trained < loss_base


@pytest.mark.slow
@slow_smollm2
def test_masking_on_real_smollm2_tokens_and_guanaco() -> None:
    from selfalign.models import resolve_model
    from selfalign.seed import load_seed

    tok = load_tokenizer(resolve_model("smollm2", "~/.cache/selfalign"))
    pairs = load_seed(str(need(GUANACO)), limit=20)
    for ex in backward_examples(pairs, tok, 512):
        row = tokenize_example(tok, ex, 512)
        n_target = sum(x != IGNORE_INDEX for x in row["labels"])
        assert n_target >= 1
        prompt_len = len(row["labels"]) - n_target
        assert all(x == IGNORE_INDEX for x in row["labels"][:prompt_len])
        decoded = tok.decode(row["input_ids"][prompt_len:])
        assert decoded.startswith(ex.target[: min(20, len(ex.target))])
        assert decoded.endswith("<|im_end|>")


def test_length_bucket_sampler_groups_even_small_sets_and_is_seeded() -> None:
    import random

    from selfalign.train import LengthBucketSampler

    rng = random.Random(0)
    lengths = [rng.randint(10, 320) for _ in range(75)]  # a default run's forward set: 48 seed + 27 curated

    def padding(order: list[int], bs: int) -> float:
        padded = sum(max(lengths[i] for i in order[k:k + bs]) * len(order[k:k + bs]) for k in range(0, len(order), bs))
        return 1 - sum(lengths) / padded

    s = LengthBucketSampler(lengths, 4, seed=0)
    first = list(s)
    assert sorted(first) == list(range(75))  # every example once per epoch
    assert first == list(LengthBucketSampler(lengths, 4, seed=0))  # same seed and epoch: same order (resume)
    s.set_epoch(1)
    assert list(s) != first and sorted(s) == list(range(75))  # a new order each epoch
    randoms = [padding(rng.sample(range(75), 75), 4) for _ in range(20)]
    assert padding(first, 4) < 0.1 and 3 * padding(first, 4) < min(randoms)  # measured: 7.7% vs >= 25%
    # 12 examples, batch 4: the Trainer's group_by_length sampler does not group at all here
    small = lengths[:12]
    order = list(LengthBucketSampler(small, 4, seed=3))
    batches = [sorted(small[i] for i in order[k:k + 4]) for k in range(0, 12, 4)]
    assert all(a[-1] <= b[0] or b[-1] <= a[0] for a in batches for b in batches if a is not b)  # ranges never overlap
