"""Denoisers that carry a deliberate, controlled estimation error.

A trained network is never the exact E[x0|x]. AdaSDE's claim is that stochastic churn
corrects part of that error where a deterministic solver cannot; testing it needs an error we
control. Two kinds:

* ``"field"``: ``D_err(x, sigma) = D(x, sigma) + m * scale * tau * phi(x_flow)`` with a fixed,
  smooth random feature field ``phi(u) = sqrt(2) sin(u W + c)`` (RMS 1 per coordinate), ``scale``
  the data RMS and ``tau = sigma / (1 + sigma)``. The error vanishes as sigma -> 0 (so D -> x
  still holds) and its RMS tends to ``m * scale`` at pure noise: ``m`` is the relative magnitude.
* ``"covariance"``: the exact denoiser of the same mixture with every covariance multiplied by
  ``1 + m`` (a biased density model: still a valid score field, the error is systematic).
"""

from __future__ import annotations

import math

import torch

from .gmm import GaussianMixture, _per_sample, sigma_to_flow_coefficients


class FieldErrorDenoiser:
    """Exact mixture denoiser plus a smooth random perturbation of relative size ``magnitude``."""

    def __init__(self, mixture: GaussianMixture, magnitude: float, seed: int, frequency: float = 1.0) -> None:
        if not magnitude >= 0:
            raise ValueError(f"error magnitude must be >= 0, got {magnitude}")
        self.mixture = mixture
        self.data_shape = mixture.data_shape
        self.magnitude = float(magnitude)
        d = mixture.dim
        g = torch.Generator().manual_seed(seed)
        # W ~ N(0, f^2/d): the argument u W has O(f) variation per unit RMS move of x_flow.
        self._w = torch.randn(d, d, generator=g, dtype=torch.float64) * (frequency / math.sqrt(d))
        self._c = torch.rand(d, generator=g, dtype=torch.float64) * (2 * math.pi)
        self._scale = math.sqrt(mixture.second_moment())

    def error_flow(self, x_flow: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
        """The added error term at (x_flow, tau), same shape as x_flow."""
        xf = x_flow.reshape(x_flow.shape[0], -1)
        b = _per_sample(tau, xf.shape[0], xf).reshape(-1, 1)
        phi = math.sqrt(2.0) * torch.sin(xf @ self._w.to(xf) + self._c.to(xf))
        return (self.magnitude * self._scale * b * phi).reshape(x_flow.shape)

    def denoise_flow(self, x_flow, tau, one_minus_tau=None):
        return self.mixture.denoise_flow(x_flow, tau, one_minus_tau) + self.error_flow(x_flow, tau)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        s = _per_sample(sigma, x.shape[0], x)
        tau, a = sigma_to_flow_coefficients(s)
        shape = (-1,) + (1,) * (x.dim() - 1)
        x_flow = torch.where(torch.isinf(s).reshape(shape), torch.zeros_like(x), x * a.reshape(shape))
        return self.mixture.denoise_flow(x_flow, tau, a) + self.error_flow(x_flow, tau)


def make_error_denoiser(mixture: GaussianMixture, kind: str, magnitude: float, seed: int):
    """The denoiser for an ``ErrorSpec``-like (kind, magnitude, seed); see the module docstring."""
    if kind == "field":
        return FieldErrorDenoiser(mixture, magnitude, seed)
    if kind == "covariance":
        return mixture.with_variances_scaled(1.0 + magnitude)
    raise ValueError(f"error kind must be 'field' or 'covariance', got {kind!r}")
