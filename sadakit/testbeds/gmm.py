"""A Gaussian mixture whose denoiser E[x0 | x0 + sigma * n = x] is known in closed form.

With diagonal component covariances ``v_k`` the noisy marginal is again a mixture,
``p_sigma(x) = sum_k w_k N(x; mu_k, v_k + sigma^2)``, and the posterior mean is

    D(x, sigma) = sum_k r_k(x) [mu_k + v_k / (v_k + sigma^2) (x - mu_k)],

with responsibilities ``r_k`` from a log-sum-exp over the component log-densities.

Numerics: everything is computed in the *flow chart* of the same ODE
(``x_flow = x / (1 + sigma)``, ``tau = sigma / (1 + sigma)``, ``a = 1 - tau``). Multiplying
numerator and denominator by ``a^2`` gives

    (x - mu)^2 / (v + sigma^2) = (x_flow - a mu)^2 / (v a^2 + tau^2),

which is finite on the whole closed interval tau in [0, 1]: sigma = inf (tau = 1) returns the
mixture mean, sigma = 0 returns x, and nothing overflows in float32 (the plain VE formula
squares sigma and subtracts infinities). ``a`` is always computed as ``1 / (1 + sigma)``
rather than ``1 - tau`` to avoid cancellation near the noisy end.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch

#: Elements of the (batch, components, dims) work tensor handled at once.
_CHUNK_ELEMENTS = 1 << 22


class Denoiser(Protocol):
    """What solvers and model wrappers need: an x0-estimate in both charts."""

    data_shape: tuple[int, ...]

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor: ...

    def denoise_flow(
        self, x_flow: torch.Tensor, tau: torch.Tensor | float, one_minus_tau: torch.Tensor | float | None = None
    ) -> torch.Tensor: ...


def _per_sample(value: torch.Tensor | float, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Scalar or (B,) noise level as a (B,) tensor in ``like``'s dtype/device."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1)
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"noise level has {t.numel()} entries for a batch of {batch}")
    return t


def sigma_to_flow_coefficients(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tau, 1 - tau) from sigma, exact at sigma = 0 and sigma = inf (no inf/inf)."""
    one_minus_tau = 1.0 / (1.0 + sigma)
    tau = 1.0 / (1.0 + 1.0 / sigma)  # sigma = 0 -> 1/(1+inf) = 0; sigma = inf -> 1
    return tau, one_minus_tau


class GaussianMixture:
    """Mixture of Gaussians with diagonal covariances over data of shape ``data_shape``.

    Parameters are stored in float64; every method computes in the dtype of its input, so the
    same object serves float32 pipelines and float64 references.
    """

    def __init__(
        self,
        weights: torch.Tensor | Sequence[float],
        means: torch.Tensor,
        variances: torch.Tensor | float,
        data_shape: tuple[int, ...] | None = None,
    ) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        k = means.shape[0]
        self.data_shape: tuple[int, ...] = tuple(data_shape) if data_shape is not None else tuple(means.shape[1:])
        d = math.prod(self.data_shape)
        means = means.reshape(k, d)
        weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if weights.numel() != k:
            raise ValueError(f"weights has {weights.numel()} entries for {k} components")
        if not bool((weights > 0).all()):
            raise ValueError("mixture weights must be > 0")
        variances = torch.as_tensor(variances, dtype=torch.float64)
        if variances.dim() <= 1 and variances.numel() in (1, k):  # isotropic, shared or per component
            variances = variances.reshape(-1, 1).expand(k, d)
        variances = variances.reshape(k, d).clone()
        if not bool((variances > 0).all()):
            raise ValueError("component variances must be > 0 (degenerate components have no density)")
        self.weights = weights / weights.sum()
        self.means = means.contiguous()
        self.variances = variances.contiguous()
        self._cast: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}

    # ---------------------------------------------------------------- basic properties
    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> torch.Tensor:
        """Mixture mean, shape ``data_shape``."""
        return (self.weights[:, None] * self.means).sum(0).reshape(self.data_shape)

    def second_moment(self) -> float:
        """E|x0|^2 / d: the data scale per coordinate."""
        m2 = (self.means**2 + self.variances).mean(1)
        return float((self.weights * m2).sum())

    def with_variances_scaled(self, factor: float) -> "GaussianMixture":
        """The same mixture with every covariance multiplied by ``factor`` (a biased model)."""
        return GaussianMixture(self.weights, self.means, self.variances * factor, self.data_shape)

    def _params(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = (like.dtype, like.device)
        if key not in self._cast:
            self._cast[key] = (
                self.weights.log().to(like),
                self.means.to(like),
                self.variances.to(like),
            )
        return self._cast[key]  # type: ignore[return-value]

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.data_shape and not (x.dim() == 2 and x.shape[1] == self.dim):
            raise ValueError(f"expected data of shape (B, {self.data_shape}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.dim)

    # ---------------------------------------------------------------- sampling / density
    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``n`` exact draws, shape (n, *data_shape)."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[comp] + self.variances[comp].sqrt() * noise
        return x.reshape(n, *self.data_shape).to(dtype)

    def log_prob(self, x: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
        """Exact log-density of ``x`` under the mixture convolved with N(0, sigma^2 I); shape (B,)."""
        xf = self._flat(x)
        logw, mu, var = self._params(xf)
        out = []
        for chunk in self._chunks(xf):
            den = var[None] + sigma**2
            quad = ((chunk[:, None, :] - mu[None]) ** 2 / den).sum(-1)
            logdet = den.log().sum(-1)
            comp = logw[None] - 0.5 * (quad + logdet + self.dim * math.log(2 * math.pi))
            out.append(torch.logsumexp(comp, dim=1))
        return torch.cat(out)

    # ---------------------------------------------------------------- the exact denoiser
    def _chunks(self, xf: torch.Tensor):
        step = max(1, _CHUNK_ELEMENTS // (self.n_components * self.dim))
        for i in range(0, xf.shape[0], step):
            yield xf[i : i + step]

    def responsibilities_flow(self, x_flow: torch.Tensor, tau: torch.Tensor | float, one_minus_tau=None) -> torch.Tensor:
        """Posterior component probabilities r_k(x), shape (B, K)."""
        return self._posterior(x_flow, tau, one_minus_tau)[0]

    def denoise_flow(
        self, x_flow: torch.Tensor, tau: torch.Tensor | float, one_minus_tau: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        """E[x0 | x_flow] with ``x_flow = (1 - tau) x0 + tau n``; tau in [0, 1], scalar or (B,).

        Pass ``one_minus_tau`` when it is known more accurately than ``1 - tau`` (near tau = 1).
        """
        return self._posterior(x_flow, tau, one_minus_tau)[1]

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """E[x0 | x0 + sigma n = x]; sigma scalar or (B,), any value in [0, inf]."""
        s = _per_sample(sigma, x.shape[0], x)
        tau, a = sigma_to_flow_coefficients(s)
        x_flow = x * a.reshape(-1, *([1] * (x.dim() - 1)))
        x_flow = torch.where(torch.isinf(s).reshape(-1, *([1] * (x.dim() - 1))), torch.zeros_like(x), x_flow)
        return self.denoise_flow(x_flow, tau, a)

    def _posterior(self, x_flow, tau, one_minus_tau):
        xf = self._flat(x_flow)
        b_all = _per_sample(tau, xf.shape[0], xf)
        a_all = 1.0 - b_all if one_minus_tau is None else _per_sample(one_minus_tau, xf.shape[0], xf)
        shared = bool((b_all == b_all[0]).all() and (a_all == a_all[0]).all())
        if xf.dtype == torch.float64 and shared:
            r, d = self._posterior_shared_level(xf, a_all[0], b_all[0])
        else:
            r, d = self._posterior_direct(xf, a_all, b_all)
        return r, d.reshape(x_flow.shape)

    def _posterior_shared_level(self, xf, a, b):
        """One noise level for the whole batch, float64: the per-component quadratic forms
        expand into matrix products, (B, d) @ (d, K), and nothing of size B x K x d is formed.
        The expansion cancels O(d |x|^2 / v) terms, harmless at float64's 1e-16 but not at
        float32's 1e-7: float32 inputs take the direct path."""
        logw, mu, var = self._params(xf)
        den = var * a * a + b * b  # (K, d)
        inv = 1.0 / den
        quad = (xf * xf) @ inv.T - 2.0 * a * (xf @ (mu * inv).T) + (a * a) * (mu * mu * inv).sum(1)
        logits = logw - 0.5 * (quad + den.log().sum(1))
        r = torch.softmax(logits, dim=1)  # (B, K)
        gain = var * a * inv  # (K, d)
        # sum_k r_k [mu_k + gain_k (x - a mu_k)]
        out = r @ mu + xf * (r @ gain) - a * (r @ (gain * mu))
        return r, out

    def _posterior_direct(self, xf, a_all, b_all):
        """Per-sample levels or float32: the (B, K, d) tensors formed in chunks, no cancellation."""
        logw, mu, var = self._params(xf)
        resp, out = [], []
        start = 0
        for chunk in self._chunks(xf):
            n = chunk.shape[0]
            a = a_all[start : start + n].reshape(n, 1, 1)
            b = b_all[start : start + n].reshape(n, 1, 1)
            start += n
            diff = chunk[:, None, :] - a * mu[None]  # (n, K, d)
            den = var[None] * a * a + b * b
            logits = logw[None] - 0.5 * (diff * diff / den + den.log()).sum(-1)
            r = torch.softmax(logits, dim=1)
            gain = var[None] * a / den  # (v a / (v a^2 + tau^2)): 1/a at tau=0, 0 at tau=1
            comp_mean = mu[None] + gain * diff
            resp.append(r)
            out.append(torch.einsum("nk,nkd->nd", r, comp_mean))
        return torch.cat(resp), torch.cat(out)

    # ---------------------------------------------------------------- constructors
    @classmethod
    def random(
        cls,
        data_shape: tuple[int, ...],
        n_components: int,
        seed: int,
        mean_scale: float = 1.0,
        std_range: tuple[float, float] = (0.2, 0.5),
                diagonal: bool = True,
    ) -> "GaussianMixture":
        """A reproducible random mixture: Gaussian means, per-coordinate (or per-component) stds
        log-uniform in ``std_range``, weights uniform in [0.5, 1.5] (normalised)."""
        g = torch.Generator().manual_seed(seed)
        d = math.prod(data_shape)
        means = torch.randn(n_components, d, generator=g, dtype=torch.float64) * mean_scale
        shape = (n_components, d) if diagonal else (n_components, 1)
        lo, hi = math.log(std_range[0]), math.log(std_range[1])
        stds = torch.exp(lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64))
        weights = 0.5 + torch.rand(n_components, generator=g, dtype=torch.float64)
        return cls(weights, means, (stds**2).expand(n_components, d), data_shape)

    @classmethod
    def ring(cls, n_components: int, radius: float = 2.0, std: float = 0.2, seed: int = 0) -> "GaussianMixture":
        """The classic 2-D benchmark: equal-weight modes on a circle (well separated, multimodal)."""
        angles = torch.arange(n_components, dtype=torch.float64) * (2 * math.pi / n_components)
        means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
        return cls(torch.ones(n_components), means, std**2, (2,))
