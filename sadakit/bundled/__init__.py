"""Small models sadakit trains itself and ships, loaded through the real ``from_pretrained``.

Why: no model hub is reachable where sadakit is developed, and random-weight pipelines
only show that the machinery runs. These models learned a data distribution, so a SADA
fidelity number or a demo picture measured on them means something.

* ``shapes-sd``: a ``StableDiffusionPipeline`` (32x32 px) trained on
  :mod:`sadakit.bundled.data_shapes` ("a red circle in the top left"), plus an independent
  classifier that measures prompt adherence.

    from sadakit.bundled import load_shapes_pipeline, evaluate_adherence
    pipe = load_shapes_pipeline()
    print(evaluate_adherence(pipe, n_prompts=12))

Training: ``scripts/train_shapes.py``; numbers and commands: ``docs/bundled_models.md``.
"""

from ._files import MODELS_DIR, BundledModelError, check_model_dir
from .shapes import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    SHAPES_DIR,
    AdherenceResult,
    SADAComparison,
    ShapesClassifier,
    compare_sada,
    eval_prompts,
    evaluate_adherence,
    generate,
    load_classifier,
    load_shapes_pipeline,
    prompt_adherence,
)

__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_STEPS",
    "MODELS_DIR",
    "SHAPES_DIR",
    "AdherenceResult",
    "SADAComparison",
    "compare_sada",
    "BundledModelError",
    "ShapesClassifier",
    "check_model_dir",
    "eval_prompts",
    "evaluate_adherence",
    "generate",
    "load_classifier",
    "load_shapes_pipeline",
    "prompt_adherence",
]
