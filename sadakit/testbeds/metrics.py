"""Quality metrics against the exact references of the testbed.

* trajectory fidelity: per-sample RMSE to the reference ODE end (same start noise), and the
  fraction of samples that end in the same mixture component as the reference (a solver that
  crosses a decision boundary makes a large, qualitative error that RMSE alone blurs);
* distribution fidelity: sliced Wasserstein-2 and RBF-MMD^2 to fresh exact samples, each
  with a confidence interval over repeated draws (new true samples and new projections per
  repeat), and the noise floor of the same estimator between two sets of true samples;
* exact mean log-likelihood per dimension under the mixture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .gmm import GaussianMixture


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).to(torch.float64)


def per_sample_rmse(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """sqrt(mean over coordinates of (x - ref)^2), one value per sample; shape (B,)."""
    return (_flat(x) - _flat(ref)).pow(2).mean(1).sqrt()


def rmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Root mean square error over all samples and coordinates."""
    return float((_flat(x) - _flat(ref)).pow(2).mean().sqrt())


def mode_agreement(mixture: GaussianMixture, x: torch.Tensor, ref: torch.Tensor) -> float:
    """Fraction of samples whose most likely component equals the reference's."""
    zero = torch.zeros(x.shape[0], dtype=torch.float64)
    kx = mixture.responsibilities_flow(_flat(x), zero).argmax(1)
    kr = mixture.responsibilities_flow(_flat(ref), zero).argmax(1)
    return float((kx == kr).double().mean())


def mean_log_likelihood(mixture: GaussianMixture, x: torch.Tensor) -> float:
    """Exact mean log-density per dimension (nats/dim) under the mixture."""
    return float(mixture.log_prob(_flat(x)).mean()) / mixture.dim


def sliced_wasserstein(
    x: torch.Tensor, y: torch.Tensor, n_projections: int = 256, generator: torch.Generator | None = None
) -> float:
    """Sliced Wasserstein-2 between two equal-size sample sets (random unit directions,
    sorted 1-D projections): sqrt(mean over directions of W2^2)."""
    xf, yf = _flat(x), _flat(y)
    if xf.shape != yf.shape:
        raise ValueError(f"sliced_wasserstein needs equal-size sets, got {tuple(xf.shape)} and {tuple(yf.shape)}")
    dirs = torch.randn(xf.shape[1], n_projections, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, _ = (xf @ dirs).sort(dim=0)
    py, _ = (yf @ dirs).sort(dim=0)
    return float((px - py).pow(2).mean().sqrt())


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 with a Gaussian kernel; bandwidth: median pairwise distance of the pooled set."""
    xf, yf = _flat(x), _flat(y)
    pooled = torch.cat([xf, yf])
    d2 = torch.cdist(pooled, pooled).pow(2)
    if bandwidth is None:
        bandwidth = float(d2[d2 > 0].median().sqrt())
    k = torch.exp(-d2 / (2 * bandwidth**2))
    n, m = xf.shape[0], yf.shape[0]
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2 * kxy.mean())


@dataclass(frozen=True)
class Estimate:
    """Mean over repeats with a normal-approximation 95 % confidence half-width."""

    mean: float
    ci95: float
    repeats: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.ci95:.4f}"


def _estimate(values: list[float]) -> Estimate:
    v = torch.tensor(values, dtype=torch.float64)
    half = 1.96 * float(v.std(unbiased=True)) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return Estimate(float(v.mean()), half, len(values))


def distribution_distance(
    mixture: GaussianMixture,
    x: torch.Tensor,
    repeats: int = 8,
    seed: int = 0,
    kind: str = "sw",
    n_projections: int = 256,
) -> Estimate:
    """SW2 (``kind="sw"``) or MMD^2 (``"mmd"``) from ``x`` to fresh exact samples of the same size,
    repeated with new true samples (and new projections) for a confidence interval."""
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(repeats):
        truth = mixture.sample(x.shape[0], generator=g)
        if kind == "sw":
            values.append(sliced_wasserstein(x, truth, n_projections, generator=g))
        elif kind == "mmd":
            values.append(mmd_rbf(x, truth))
        else:
            raise ValueError(f"kind must be 'sw' or 'mmd', got {kind!r}")
    return _estimate(values)


def distance_floor(mixture: GaussianMixture, n: int, repeats: int = 8, seed: int = 1, kind: str = "sw") -> Estimate:
    """The same estimator between two independent true sample sets of size n: the value a
    perfect sampler would get (SW of finite samples is biased above 0)."""
    g = torch.Generator().manual_seed(seed)
    return distribution_distance(mixture, mixture.sample(n, generator=g), repeats, seed + 1, kind)
