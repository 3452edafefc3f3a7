"""AdaSDE in pipelines: coefficient files, the diffusers scheduler and distillation.

    from sadakit.adasde import AdaSDEScheduler, distill
    pipe.scheduler = AdaSDEScheduler.from_file("coeffs.safetensors", pipe.scheduler)
    image = pipe(prompt, num_inference_steps=5).images[0]

    # coefficients for a pipeline, under its own prompts and guidance
    distill_pipeline(pipe, ["a cat", "a city"], DistillConfig(nfe=5), guidance_scale=5.0, output="c.safetensors")

The step itself (plain tensor functions) lives in ``sadakit.core.adasde``.
"""

from ..core.adasde import count_nfe, make_sigmas, sample_adasde, steps_for_nfe
from .coefficients import (
    CoefficientFile,
    CoefficientMetadata,
    CoefficientMismatchError,
    check_compatible,
    load_coefficients,
    save_coefficients,
)
from .distill import DistillConfig, DistillResult, distill, latent_l2, sliced_w2_loss
from .pipeline_denoiser import PipelineDenoiser, distill_pipeline, pipeline_denoiser
from .scheduler import AdaSDEScheduler

__all__ = [
    "AdaSDEScheduler",
    "CoefficientFile",
    "CoefficientMetadata",
    "CoefficientMismatchError",
    "DistillConfig",
    "DistillResult",
    "PipelineDenoiser",
    "check_compatible",
    "count_nfe",
    "distill",
    "distill_pipeline",
    "latent_l2",
    "load_coefficients",
    "make_sigmas",
    "pipeline_denoiser",
    "sample_adasde",
    "save_coefficients",
    "sliced_w2_loss",
    "steps_for_nfe",
]
