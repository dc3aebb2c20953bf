"""Text embeddings for the paraphrase check and the diversity rule: a causal LM's pooled hidden
states (the run's base model by default: it is there on every machine, no extra download).

A text's vector is the mean over its tokens of one layer's hidden states, standardised per
dimension (minus the mean, divided by the standard deviation, both taken over a reference set of
texts: the benchmark prompts), scaled to unit length. Without the standardisation a few huge
dimensions of a causal LM's states make every pair of texts look alike (cosine > 0.9). The layer
is `hygiene.embedding_layer` counted from the input; only the layers up to it are run. Layer 8
of SmolLM2-135M separated planted paraphrases best (docs/hygiene.md), at ~1/4 of a forward pass.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from selfalign.log import say

if TYPE_CHECKING:
    from selfalign.config import Config


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def pooled_states(texts: Sequence[str], model: object, tok: object, layer: int, max_tokens: int,
                  batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """Mean-pooled hidden states of `layer` for each text (not centred, not normalised)."""
    import torch
    from tqdm import tqdm

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: less padding
    layer = min(layer, model.config.num_hidden_layers)  # type: ignore[attr-defined]  # a smaller model: its last
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layer > 0 and layers is not None and len(layers) > layer:  # the layers past it are not needed
        model.model.layers = layers[:layer]  # type: ignore[attr-defined]
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)  # type: ignore[attr-defined]
    dev = next(model.parameters()).device  # type: ignore[attr-defined]
    tok.padding_side = "right"  # type: ignore[attr-defined]
    bar = tqdm(total=len(texts), desc="hygiene: embeddings", unit="text", disable=not progress or len(texts) < 64)
    for start in range(0, len(order), batch_size):
        ix = order[start:start + batch_size]
        enc = tok([texts[i] for i in ix], return_tensors="pt", padding=True, truncation=True,  # type: ignore[operator]
                  max_length=max_tokens).to(dev)
        with torch.inference_mode():
            hs = model(**enc, output_hidden_states=True).hidden_states[layer]  # type: ignore[operator]
        mask = enc["attention_mask"].unsqueeze(-1).to(hs.dtype)
        pooled = (hs * mask).sum(1) / mask.sum(1).clamp(min=1)
        out[ix] = pooled.float().cpu().numpy()
        bar.update(len(ix))
    bar.close()
    return out


def unit_rows(mat: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """Rows standardised per dimension by the statistics of `ref` (default: `mat`), unit length."""
    ref = mat if ref is None else ref
    m = (mat - ref.mean(0)) / (ref.std(0) + 1e-6)
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-8)


class Embedder:
    """Embeds texts with `hygiene.embeddings` (base: models.base). Raw vectors are cached by text
    in `cache` (an .npz of `keys` and `vectors`; one per model, layer and length under
    models.cache_dir), so the benchmark prompts are embedded once per machine and the later
    hygiene stage and the diversity rule reuse the earlier one's."""

    def __init__(self, cfg: Config, cache: Path | None = None) -> None:
        self.cfg, self.cache = cfg, cache
        self.raw: dict[str, np.ndarray] = {}
        if cache is not None and cache.is_file():
            try:
                with np.load(cache) as z:
                    self.raw = dict(zip(z["keys"].tolist(), z["vectors"], strict=True))
            except (OSError, ValueError, KeyError):  # a damaged cache is rebuilt
                say(f"hygiene: embedding cache {cache} unreadable; rebuilt")
        self._model: tuple[object, object] | None = None
        self.seconds = 0.0

    @property
    def spec(self) -> str:
        e = self.cfg.hygiene.embeddings
        return self.cfg.models.base if e == "base" else e

    def _load(self) -> tuple[object, object]:
        if self._model is None:
            from selfalign import memory
            from selfalign.gpu import release
            from selfalign.models import load_model, pick_device, resolve_model

            say(f"hygiene: embeddings from the pooled hidden states of {self.spec} "
                f"(layer {self.cfg.hygiene.embedding_layer})")
            release()  # as before every model load: what an earlier stage held goes first, then the check
            memory.check(self.cfg, self.spec, resolve_model(self.spec, self.cfg.models.cache_dir),
                         pick_device(self.cfg.run.device))
            self._model = load_model(self.spec, self.cfg.models, self.cfg.run.device)
        return self._model

    def _save(self) -> None:
        if self.cache is None:
            return
        try:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache.with_name(f"{self.cache.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, keys=np.array(list(self.raw)), vectors=np.stack(list(self.raw.values())))
            tmp.replace(self.cache)
        except OSError as e:  # a cache only: the run goes on without it
            say(f"hygiene: embedding cache not written ({e})")

    def vectors(self, texts: Sequence[str], ref: Sequence[str] = (), progress: bool = True) -> dict[str, np.ndarray]:
        """Unit vectors of `texts` and `ref`, by text, standardised by the statistics of `ref`
        (of `texts` when `ref` has fewer than 32 texts)."""
        import time

        t0 = time.perf_counter()
        ref = list(dict.fromkeys(ref))
        uniq = list(dict.fromkeys([*texts, *ref]))
        todo = [t for t in uniq if text_key(t) not in self.raw]
        if todo:
            model, tok = self._load()
            h = self.cfg.hygiene
            got = pooled_states(todo, model, tok, h.embedding_layer, h.embedding_max_tokens, progress=progress)
            self.raw.update({text_key(t): v for t, v in zip(todo, got, strict=True)})
            self._save()
        self.seconds += time.perf_counter() - t0
        if not uniq:
            return {}
        mat = np.stack([self.raw[text_key(t)] for t in uniq])
        stats = np.stack([self.raw[text_key(t)] for t in ref]) if len(ref) >= 32 else mat
        return dict(zip(uniq, unit_rows(mat, stats), strict=True))

    def close(self) -> None:
        self._model = None
