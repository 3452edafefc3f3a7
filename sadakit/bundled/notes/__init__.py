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

from .._namespace import lazy_namespace

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
__getattr__, __dir__, __all__ = lazy_namespace(__name__, _EXPORTS, _ALIASES)
