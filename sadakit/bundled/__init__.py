"""Small models sadakit trains itself and ships, loaded through the real ``from_pretrained``.

Why: no model hub is reachable where sadakit is developed, and random-weight pipelines
only show that the machinery runs. These models learned a data distribution, so a SADA
fidelity number or a demo picture measured on them means something.

Each model is a namespace with the same names (``load_pipeline``, ``generate``, ``eval_prompts``,
``evaluate``, ``compare``, ``adherence``, ``scorer``, ``DEFAULT_STEPS``, ``DEFAULT_GUIDANCE``,
``CALL_KWARGS``):

* :mod:`sadakit.bundled.shapes`: a ``StableDiffusionPipeline`` (32x32 px) trained on
  :mod:`sadakit.bundled.data_shapes` ("a red circle in the top left"), plus an independent
  classifier that measures prompt adherence.
* :mod:`sadakit.bundled.shapes_dit` (``bundled:shapes-dit``): a ``FluxPipeline`` (the Flux
  architecture, flow matching) trained on the same data and judged by the same classifier.
* :mod:`sadakit.bundled.moving_shapes` (``bundled:moving-shapes``): a ``WanPipeline`` (9 frames
  of 32x32) trained on :mod:`sadakit.bundled.data_moving_shapes` ("a red circle moving left"),
  judged by a frame classifier (shape, colour) and the track of the shape's centre (direction).
* :mod:`sadakit.bundled.notes`: a ``MusicLDMPipeline`` (1.28 s at 16 kHz) trained on
  :mod:`sadakit.bundled.data_notes` ("a soft note C4"); pitch adherence is measured by DSP.

    from sadakit.bundled import shapes
    pipe = shapes.load_pipeline()
    print(shapes.evaluate(pipe, n_prompts=12))

Training: ``scripts/train_shapes.py``, ``scripts/train_shapes_dit.py``, ``scripts/train_moving_shapes.py``,
``scripts/train_notes.py``; numbers and commands: ``docs/bundled_models.md``.
"""

from ._files import MODELS_DIR, BundledModelError, check_model_dir

#: The ``bundled:<name>`` pipelines, each a subpackage of this one (``-`` in a name is ``_`` in its module).
NAMES = ("shapes", "shapes-dit", "moving-shapes", "notes")

__all__ = ["MODELS_DIR", "NAMES", "BundledModelError", "check_model_dir"]
