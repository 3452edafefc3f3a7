"""The bundled "shapes-dit" text-to-image model (``FluxPipeline``, 32x32 px, flow matching).

    from sadakit.bundled import shapes_dit
    pipe = shapes_dit.load_pipeline()
    images = shapes_dit.generate(pipe, shapes_dit.eval_prompts(4))
    print(shapes_dit.evaluate(pipe, n_prompts=12))          # the classifier's prompt adherence
    print(shapes_dit.compare(pipe, n_prompts=8).row())      # baseline vs SADA

Same names as :mod:`sadakit.bundled.shapes` (same data, same judge, the Flux architecture).
The model (:mod:`.model`) is what ``sadakit generate`` needs; the judge (:mod:`.judging`) and
the comparison (:mod:`.comparison`) are evaluation code, imported only when asked for.
"""

from __future__ import annotations

from .._namespace import lazy_namespace

_EXPORTS = {
    "model": ("MODEL_DIR", "DEFAULT_STEPS", "DEFAULT_GUIDANCE", "CALL_KWARGS", "IMAGE_SIZE", "PIPELINE_FILES",
              "load_pipeline", "generate", "eval_prompts", "images_to_tensor", "assemble_pipeline"),
    "judging": ("ShapesClassifier", "AdherenceResult", "CLASSIFIER_FILE", "load_classifier", "adherence", "evaluate",
                "scorer"),
    "comparison": ("compare",),
}
__getattr__, __dir__, __all__ = lazy_namespace(__name__, _EXPORTS, {})
