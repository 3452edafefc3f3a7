"""AdaSDE in pipelines: coefficient files, the diffusers scheduler and distillation.

    from sadakit.adasde import AdaSDEScheduler, distill, scheduler_for_pipeline
    pipe.scheduler = scheduler_for_pipeline(pipe, "coeffs.safetensors")  # refuses a file for another model
    image = pipe(prompt, num_inference_steps=5).images[0]

    # coefficients for a pipeline, under its own prompts and guidance
    distill_pipeline(pipe, ["a cat", "a city"], DistillConfig(nfe=5), guidance_scale=5.0, output="c.safetensors")

The step itself (plain tensor functions) lives in ``sadakit.core.adasde``.
"""

from ..core.adasde import count_nfe, make_sigmas, sample_adasde, steps_for_nfe
from .coefficients import (
    CoefficientFile,
    CoefficientFileError,
    CoefficientMetadata,
    CoefficientMismatchError,
    OtherModelError,
    check_compatible,
    load_coefficients,
    save_coefficients,
)
from .distill import DistillConfig, DistillResult, distill, latent_l2, sliced_w2_loss
from .pipeline_denoiser import PipelineDenoiser, distill_pipeline, pipeline_denoiser
from .identity import FingerprintError, check_model_identity, model_fingerprint
from .scheduler import AdaSDEScheduler, scheduler_for_pipeline

__all__ = [
    "AdaSDEScheduler",
    "CoefficientFile",
    "CoefficientFileError",
    "CoefficientMetadata",
    "CoefficientMismatchError",
    "DistillConfig",
    "DistillResult",
    "FingerprintError",
    "OtherModelError",
    "PipelineDenoiser",
    "check_compatible",
    "check_model_identity",
    "count_nfe",
    "distill",
    "distill_pipeline",
    "latent_l2",
    "load_coefficients",
    "make_sigmas",
    "model_fingerprint",
    "pipeline_denoiser",
    "sample_adasde",
    "save_coefficients",
    "scheduler_for_pipeline",
    "sliced_w2_loss",
    "steps_for_nfe",
]
