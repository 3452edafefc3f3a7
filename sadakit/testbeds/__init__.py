"""Analytic testbeds: data distributions whose exact denoiser and ODE solutions are known.

``get_testbed("gmm64-16")`` gives a Gaussian mixture and the denoiser solvers run on;
``sadakit.testbeds.pipeline.GMMPipeline`` runs diffusers schedulers (and SADA, through the
plugin in ``sadakit.testbeds.plugin``) on it; ``reference`` and ``metrics`` measure the result;
``bench`` is the solver-quality benchmark. Pipeline modules import diffusers, so they are not
imported here.
"""

from .configs import CONFIGS, ErrorSpec, Testbed, TestbedConfig, get_testbed, register_config
from .errors import FieldErrorDenoiser, make_error_denoiser
from .gmm import Denoiser, GaussianMixture
from .reference import solve_flow_ode, solve_from_noise

__all__ = [
    "CONFIGS",
    "Denoiser",
    "ErrorSpec",
    "FieldErrorDenoiser",
    "GaussianMixture",
    "Testbed",
    "TestbedConfig",
    "get_testbed",
    "make_error_denoiser",
    "register_config",
    "solve_flow_ode",
    "solve_from_noise",
]
