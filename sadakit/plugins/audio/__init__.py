"""Audio plugins: MusicLDM, AudioLDM and AudioLDM2 (spectrogram latents, see ``musicldm``).

``fix_musicldm(pipe)`` is for users of plain (not accelerated) MusicLDM pipelines under
transformers >= 5, where diffusers 0.42.1 cannot encode a prompt; ``sadakit.accelerate``
applies the same fix by itself while the pipeline is accelerated.
"""

from __future__ import annotations

from typing import Any

from .compat import ensure_musicldm_compat, is_musicldm_compat_applied, undo_musicldm_compat


def fix_musicldm(pipe: Any) -> bool:
    """Make a ``MusicLDMPipeline`` usable with transformers >= 5, permanently for this instance.

    Shadows ``pipe.text_encoder.get_text_features`` with a version that returns the pooled
    CLAP text embedding tensor (the transformers 4 contract diffusers relies on). Weights,
    config and ``save_pretrained`` output are unchanged. Idempotent; no-op on transformers 4.
    The fix then belongs to the caller: ``sadakit.remove`` keeps it. Returns True if the fix
    is in place afterwards (applied now or before), False if it does not apply.
    """
    from .musicldm import claim_compat

    ensure_musicldm_compat(pipe)
    claim_compat(pipe)
    return is_musicldm_compat_applied(pipe)


def unfix_musicldm(pipe: Any) -> bool:
    """Undo :func:`fix_musicldm`; True if a fix was removed."""
    from .musicldm import claim_compat

    claim_compat(pipe)
    return undo_musicldm_compat(pipe)


__all__ = ["fix_musicldm", "unfix_musicldm"]
