"""The bundled "moving-shapes" text-to-video model (``WanPipeline``, 9 frames of 32x32, flow matching).

    from sadakit.bundled import moving_shapes
    pipe = moving_shapes.load_pipeline()
    clips = moving_shapes.generate(pipe, moving_shapes.eval_prompts(4))   # (4, 9, 3, 32, 32)
    print(moving_shapes.evaluate(pipe, n_prompts=12))          # the judge's prompt adherence
    print(moving_shapes.compare(pipe, n_prompts=8).row())      # baseline vs SADA

Same names as :mod:`sadakit.bundled.shapes_dit`. The model (:mod:`.model`) is what
``sadakit generate`` needs; the judge (:mod:`.judging`: a per-frame classifier for shape and
colour, the track of the shape's centre for direction) and the comparison (:mod:`.comparison`)
are evaluation code, imported only when asked for.
"""

from __future__ import annotations

from .._namespace import lazy_namespace

_EXPORTS = {
    "model": ("MODEL_DIR", "DEFAULT_STEPS", "DEFAULT_GUIDANCE", "CALL_KWARGS", "NUM_FRAMES", "FRAME_SIZE", "LATENT_CHANNELS",
              "PIPELINE_FILES", "load_pipeline", "generate", "eval_prompts", "videos_to_tensor", "assemble_pipeline"),
    "judging": ("FrameClassifier", "AdherenceResult", "CLASSIFIER_FILE", "load_classifier", "adherence", "evaluate",
                "scorer", "judge_clips"),
    "comparison": ("compare",),
}
__getattr__, __dir__, __all__ = lazy_namespace(__name__, _EXPORTS, {})
