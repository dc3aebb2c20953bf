"""Steps and engines: a row's output depends on the row, its seed and the model, not on its batch."""

from __future__ import annotations

from pathlib import Path

import torch

from selfalign.generation import GenParams, generate, load_engine
from selfalign.steps import row_seed

PROMPTS = [f"Tell me about thing {i}." + " More words." * (i % 4) for i in range(7)]


def test_sampled_text_depends_on_the_row_not_its_batch(tiny_model: Path) -> None:
    from selfalign.config import load_config

    engine = load_engine(load_config(None, [f"models.base={tiny_model}", "generation.batch_size=4"]), str(tiny_model))
    params = GenParams(temperature=1.0, top_p=0.9, max_new_tokens=8)
    seeds = [row_seed(0, f"r{i}") for i in range(len(PROMPTS))]
    together = generate(engine, PROMPTS, params, seeds=seeds, progress=False)
    engine.batch_size = 1
    alone = generate(engine, PROMPTS, params, seeds=seeds, progress=False)
    engine.batch_size = 3
    order = [5, 2, 6, 0, 3, 1, 4]  # other batches, other neighbours
    shuffled = generate(engine, [PROMPTS[i] for i in order], params, seeds=[seeds[i] for i in order], progress=False)
    assert together == alone == [shuffled[order.index(i)] for i in range(len(PROMPTS))]
    assert len(set(together)) > 1  # sampled text, not one constant
    other = generate(engine, PROMPTS, params, seeds=[s + 1 for s in seeds], progress=False)
    assert other != together  # the seed decides


def test_row_sampler_applies_temperature_and_top_p() -> None:
    from selfalign.hf_engine import _row_sampler_class

    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0]])
    logits = torch.log(probs.clamp(min=1e-12))
    picked = set()
    for seed in range(200):
        out = _row_sampler_class()([seed], 1.0, 0.6)(torch.zeros(1, 1, dtype=torch.long), logits.clone())
        assert int((out[0] == 0).sum()) == 1  # one token left: decoding is greedy over it
        picked.add(int(out[0].argmax()))
    assert picked == {0, 1}  # top-p 0.6: the smallest set reaching 0.6 is {0, 1}
    one = {int(_row_sampler_class()([s], 1.0, 0.5)(torch.zeros(1, 1, dtype=torch.long), logits.clone())[0].argmax())
           for s in range(50)}
    assert one == {0}
    k2 = {int(_row_sampler_class()([s], 1.0, 1.0, 2)(torch.zeros(1, 1, dtype=torch.long), logits.clone())[0].argmax())
          for s in range(200)}
    assert k2 == {0, 1}  # top-k 2: only the two most likely
    a = _row_sampler_class()([7, 7], 1.0, 1.0)(torch.zeros(2, 1, dtype=torch.long), logits.repeat(2, 1))
    assert torch.equal(a[0], a[1])  # same seed, same draw, whatever the row
