"""Approximate a skipped denoiser output from the computed ones.

The main variant extrapolates the clean-sample estimate ``x0`` with a Lagrange polynomial over
the true solver times of the last computed calls, then converts ``(x_current, x0_hat)`` back
to the model's own output type; the result is consistent with the state the solver holds now.
The simpler alternative extrapolates the raw model output (``2 u_n - u_{n-1}`` at order 1).
"""

from __future__ import annotations

import torch


def lagrange_extrapolation_weights(times: torch.Tensor, t_eval: torch.Tensor) -> torch.Tensor:
    """Lagrange basis values ``L_j(t_eval)`` for nodes ``times``.

    ``times`` has shape (K, B) (per-row node times, newest first) or (K,); ``t_eval`` (B,) or
    (). Returns weights of the same shape as ``times``. K = 1 gives a constant (zeroth order).
    """
    k = times.shape[0]
    weights = []
    for j in range(k):
        w = torch.ones_like(times[0])
        for i in range(k):
            if i != j:
                w = w * (t_eval - times[i]) / (times[j] - times[i])
        weights.append(w)
    return torch.stack(weights)


def extrapolate(values: torch.Tensor, times: torch.Tensor, t_eval: torch.Tensor) -> torch.Tensor:
    """Evaluate the per-row polynomial through ``values`` (K, B, ...) at ``t_eval``.

    Rows are independent: each row may have its own node times (per-sample skip histories).
    """
    w = lagrange_extrapolation_weights(times, t_eval)  # (K, B) or (K,)
    view = list(w.shape) + [1] * (values.dim() - w.dim())
    return (w.reshape(view) * values).sum(dim=0)
