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

* ``notes-musicldm``: a ``MusicLDMPipeline`` (1.28 s at 16 kHz) trained on
  :mod:`sadakit.bundled.data_notes` ("a soft note C4"); pitch adherence is measured by DSP.

    from sadakit.bundled import load_notes_pipeline, evaluate_notes
    pipe = load_notes_pipeline()
    print(evaluate_notes(pipe))

Training: ``scripts/train_shapes.py``, ``scripts/train_notes.py``; numbers and commands: ``docs/bundled_models.md``.
"""

from ._files import MODELS_DIR, BundledModelError, check_model_dir
from .notes import AUDIO_SECONDS as NOTES_AUDIO_SECONDS
from .notes import DEFAULT_GUIDANCE as NOTES_DEFAULT_GUIDANCE
from .notes import DEFAULT_STEPS as NOTES_DEFAULT_STEPS
from .notes import NOTES_DIR, NotesAdherence, evaluate_notes, generate_notes, load_notes_pipeline, pitch_adherence
from .notes import eval_prompts as notes_eval_prompts
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
    "NOTES_AUDIO_SECONDS",
    "NOTES_DEFAULT_GUIDANCE",
    "NOTES_DEFAULT_STEPS",
    "NOTES_DIR",
    "NotesAdherence",
    "SHAPES_DIR",
    "AdherenceResult",
    "SADAComparison",
    "compare_sada",
    "BundledModelError",
    "ShapesClassifier",
    "check_model_dir",
    "eval_prompts",
    "evaluate_adherence",
    "evaluate_notes",
    "generate",
    "generate_notes",
    "load_classifier",
    "load_notes_pipeline",
    "load_shapes_pipeline",
    "notes_eval_prompts",
    "pitch_adherence",
    "prompt_adherence",
]
