"""The bundled "notes" text-to-audio model (``MusicLDMPipeline``, 1.28 s at 16 kHz).

    from sadakit.bundled import notes
    pipe = notes.load_pipeline()
    clips = notes.generate(pipe, notes.eval_prompts(4))
    print(notes.evaluate(pipe))                          # pitch and timbre adherence (DSP)
    print(notes.compare(pipe, n_prompts=8).row())       # baseline vs SADA

Same names as :mod:`sadakit.bundled.shapes`. The model (:mod:`.model`: architecture, loader,
generation) is what ``sadakit generate`` needs; the judge (:mod:`.judging`) and the comparison
(:mod:`.comparison`) are evaluation code, imported only when one of their names is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "model": ("MODEL_DIR", "DEFAULT_STEPS", "DEFAULT_GUIDANCE", "CALL_KWARGS", "AUDIO_SECONDS", "SAMPLE_RATE",
              "PIPELINE_FILES", "load_pipeline", "generate", "generate_with_mels", "eval_prompts", "parse_prompt",
              "log_mel", "assemble_pipeline"),
    "judging": ("NotesAdherence", "PITCH_TOLERANCE", "adherence", "evaluate", "scorer", "mel_pitch",
                "mel_pitch_adherence", "brightness", "brightness_threshold"),
    "comparison": ("compare",),
    "pictures": ("spectrogram_picture",),
    "..notes_adasde": ("available_adasde", "adasde_path", "adasde_scheduler"),
}
_ALIASES = {"available_adasde": "available_notes_adasde", "adasde_path": "notes_adasde_path",
            "adasde_scheduler": "notes_adasde_scheduler"}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """The listed names; any other public name of the model or the judge (builders, constants)
    for the training scripts."""
    module = _WHERE.get(name)
    if module is None:
        for fallback in ("model", "judging"):
            found = getattr(importlib.import_module(f".{fallback}", __name__), name, None)
            if found is not None and not name.startswith("_"):
                return found
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}" if not module.startswith(".") else module, __name__),
                   _ALIASES.get(name, name))


def __dir__() -> list[str]:
    return __all__
