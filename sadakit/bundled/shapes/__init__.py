"""The bundled "shapes" text-to-image model (``StableDiffusionPipeline``, 32x32 px).

    from sadakit.bundled import shapes
    pipe = shapes.load_pipeline()
    images = shapes.generate(pipe, shapes.eval_prompts(4))
    print(shapes.evaluate(pipe, n_prompts=12))          # the classifier's prompt adherence
    print(shapes.compare(pipe, n_prompts=8).row())      # baseline vs SADA

Same names as :mod:`sadakit.bundled.notes`. The model (:mod:`.model`: architecture, loader,
generation) is what ``sadakit generate`` needs; the judge (:mod:`.judging`) and the comparison
(:mod:`.comparison`) are evaluation code, imported only when one of their names is asked for.
"""

from __future__ import annotations

from .._namespace import lazy_namespace

_EXPORTS = {
    "model": ("MODEL_DIR", "DEFAULT_STEPS", "DEFAULT_GUIDANCE", "CALL_KWARGS", "IMAGE_SIZE", "PIPELINE_FILES",
              "load_pipeline", "generate", "eval_prompts", "images_to_tensor", "assemble_pipeline"),
    "judging": ("ShapesClassifier", "AdherenceResult", "CLASSIFIER_FILE", "load_classifier", "adherence", "evaluate",
                "scorer"),
    "comparison": ("compare",),
    "..shapes_adasde": ("available_adasde", "adasde_path", "adasde_scheduler"),
}
_ALIASES = {"available_adasde": "available_shapes_adasde", "adasde_path": "shapes_adasde_path",
            "adasde_scheduler": "shapes_adasde_scheduler"}
__getattr__, __dir__, __all__ = lazy_namespace(__name__, _EXPORTS, _ALIASES)
