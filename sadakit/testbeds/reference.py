"""High-accuracy reference solutions of the probability-flow ODE.

The ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` is integrated in the flow chart,
``x_flow = x / (1 + sigma)``, ``tau = sigma / (1 + sigma)``:

    dx_flow / dtau = (x_flow - D) / tau,

which is finite on all of (0, 1], including pure noise (tau = 1, where flow-matching and
iPNDM schedulers start). scipy's DOP853 (8th order, adaptive) in float64 with tight
tolerances does the work; the test suite checks that tightening the tolerance by 100x moves
the answer by far less than any solver error we report.

The last stretch tau in [0, tau_end] is closed analytically: for small sigma,
``x(0) = x(sigma) - sigma^2/2 * score + O(sigma^4)`` and ``D = x - sigma^2 * score + O(sigma^4)``,
so ``x(0) ~ (x(sigma) + D(x(sigma), sigma)) / 2``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .gmm import Denoiser

#: Where the adaptive solve stops before sigma = 0 (closed by the analytic half-step).
TAU_END = 1e-5


def solve_flow_ode(
    denoiser: Denoiser,
    x_flow: torch.Tensor,
    tau_start: float,
    sigma_end: float = 0.0,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    method: str = "DOP853",
) -> torch.Tensor:
    """The exact ODE solution from ``(x_flow, tau_start)`` to ``sigma_end``, in VE data space.

    Returns x at sigma_end (``x = x0`` at sigma_end = 0), float64, shape of ``x_flow``.
    """
    if not 0.0 < tau_start <= 1.0:
        raise ValueError(f"tau_start must be in (0, 1], got {tau_start}")
    shape = x_flow.shape
    tau_stop = sigma_end / (1.0 + sigma_end) if sigma_end > 0 else TAU_END
    if tau_stop >= tau_start:
        raise ValueError(f"sigma_end={sigma_end} is not below the start (tau={tau_start})")

    def rhs(tau: float, y: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(y).reshape(shape)
        d = denoiser.denoise_flow(x, tau, 1.0 - tau)
        return ((x - d) / tau).reshape(-1).numpy()

    y0 = x_flow.detach().to(torch.float64).cpu().reshape(-1).numpy().copy()
    sol = solve_ivp(rhs, (tau_start, tau_stop), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference ODE solve failed: {sol.message}")
    x_end = torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)
    a_end = 1.0 - tau_stop
    x_ve = x_end / a_end
    if sigma_end > 0:
        return x_ve
    sigma = tau_stop / a_end
    return 0.5 * (x_ve + denoiser.denoise(x_ve, sigma))


def solve_from_noise(
    denoiser: Denoiser, noise: torch.Tensor, tau_start: float, start_scale: float, **kwargs
) -> torch.Tensor:
    """Reference from a pipeline's start: ``x_flow = start_scale * noise`` at ``tau_start``.

    ``GMMPipeline`` reports (tau_start, start_scale) of its first denoiser call; schedulers
    differ in both (e.g. Euler's ``init_noise_sigma`` vs DDIM's), so each start gets its own
    reference.
    """
    return solve_flow_ode(denoiser, noise.to(torch.float64) * start_scale, tau_start, **kwargs)
