"""Distribution metrics on feature vectors: Frechet distance and seed diversity."""

from __future__ import annotations

import torch


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID between two feature sets (N, D), in float64.

    Tr(sqrt(S_a S_b)) is computed as the trace of sqrt(sqrt(S_a) S_b sqrt(S_a)), a symmetric
    PSD matrix, so only symmetric eigendecompositions are needed (no scipy).
    """
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    evals, evecs = torch.linalg.eigh(cov_a)
    sqrt_a = evecs @ torch.diag(evals.clamp(min=0).sqrt()) @ evecs.T
    inner = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * inner)


def seed_diversity(features: torch.Tensor) -> float:
    """Mean pairwise L2 distance between images of the same prompt: features (P, S, D)."""
    d = torch.cdist(features.double(), features.double())  # (P, S, S)
    s = features.shape[1]
    return float(d.sum() / (features.shape[0] * s * (s - 1)))
