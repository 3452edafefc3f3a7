"""SADA's stability criterion as plain tensor functions (no pipeline or hook knowledge).

At denoiser call n+1 the sampler has produced ``x_{n+1}`` from drifts ``f_n, f_{n-1},
f_{n-2}``. An independent variable-step Adams-Bashforth predictor integrates the polynomial
through those drifts over the true solver interval; the solver's real result is compared
with it (residual ``r``) and multiplied with the drift's second difference (curvature ``c``).
``m = r * c`` whose mean is <= 0 marks a locally stable trajectory (the call may be skipped);
per token, ``m >= 0`` marks a token that must be recomputed.

Differences from the published code (Jiang et al., ICML 2025; docs/design.md section 2): nodes are the
true solver times (not integer indices), the predictor has the consistent variable-step
weights, decisions are per sample, and token maps have any grid shape.
"""

from __future__ import annotations

import torch


def lagrange_integral_weights(nodes: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor) -> torch.Tensor:
    """Weights ``w_j = integral_{t_from}^{t_to} L_j(t) dt`` of the Lagrange basis on ``nodes``.

    ``nodes`` has shape (k,) with k in {1, 2, 3} (k = 3: variable-step AB3). Computed in the
    normalised variable ``u = (t - t_from) / h`` for conditioning; on uniform backward nodes
    the weights reduce to h * (23, -16, 5) / 12. Works on any device without host reads.
    """
    k = nodes.shape[0]
    if k not in (1, 2, 3):
        raise ValueError(f"lagrange_integral_weights supports 1 to 3 nodes, got {k}")
    h = t_to - t_from
    u = (nodes - t_from) / h  # node positions in units of the step
    if k == 1:
        return h.reshape(1)
    if k == 2:
        u0, u1 = u[0], u[1]
        # integral_0^1 (u - u_other) / (u_j - u_other) du
        w0 = (0.5 - u1) / (u0 - u1)
        w1 = (0.5 - u0) / (u1 - u0)
        return h * torch.stack([w0, w1])
    u0, u1, u2 = u[0], u[1], u[2]

    def quad(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        # integral_0^1 (u - p)(u - q) du
        return 1.0 / 3.0 - (p + q) / 2.0 + p * q

    w0 = quad(u1, u2) / ((u0 - u1) * (u0 - u2))
    w1 = quad(u0, u2) / ((u1 - u0) * (u1 - u2))
    w2 = quad(u0, u1) / ((u2 - u0) * (u2 - u1))
    return h * torch.stack([w0, w1, w2])


def adams_bashforth_predict(
    x_n: torch.Tensor, drifts: list[torch.Tensor], times: list[torch.Tensor], t_next: torch.Tensor
) -> torch.Tensor:
    """``x_n + integral_{t_n}^{t_next} P(t) dt`` with P through (times[i], drifts[i]); newest first."""
    nodes = torch.stack([t.reshape(()) for t in times])
    w = lagrange_integral_weights(nodes, nodes[0], t_next.reshape(()))
    out = x_n.clone()
    for wi, fi in zip(w, drifts):
        out = out + wi * fi
    return out


def stability_momentum(
    x_next: torch.Tensor,
    x_n: torch.Tensor,
    drifts: list[torch.Tensor],
    times: list[torch.Tensor],
    t_next: torch.Tensor,
) -> torch.Tensor:
    """Elementwise ``m = r * c``: predictor residual times drift curvature (newest drift first)."""
    if len(drifts) != 3 or len(times) != 3:
        raise ValueError("stability_momentum needs exactly three drifts and their times")
    predicted = adams_bashforth_predict(x_n, drifts, times, t_next)
    residual = x_next - predicted
    curvature = drifts[0] - 2.0 * drifts[1] + drifts[2]
    return residual * curvature


def sample_scores(momentum: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of ``m`` over all non-batch dimensions; <= 0 means stable."""
    return momentum.reshape(momentum.shape[0], -1).mean(dim=1)


def group_scores(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Average per-row scores over groups of rows that must decide together (CFG halves).

    ``groups`` is a (G, M) long tensor of row indices; returns (G,).
    """
    return scores[groups].mean(dim=1)
