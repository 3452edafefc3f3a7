"""Make diffusers' MusicLDMPipeline run with transformers >= 5.

Why: diffusers 0.42.1 ``MusicLDMPipeline._encode_prompt`` calls
``text_encoder.get_text_features(ids, attention_mask=mask)`` and treats the result as a
tensor of shape (batch, projection_dim) (``.to(...)``, ``.shape``, ``.repeat``). That
was the transformers 4 contract: the L2-normalised CLAP text *projection* embedding.
transformers 5 returns a ``BaseModelOutputWithPooling`` instead, whose
``pooler_output`` holds that very tensor, so every generation fails with
``AttributeError: 'BaseModelOutputWithPooling' object has no attribute 'to'``.

The fix lives on the pipeline's text-encoder *instance*: its ``get_text_features`` is
shadowed by a bound method that returns the pooled tensor. A subclass would not do:
``save_pretrained`` records the class name and ``from_pretrained`` could not find it.
Weights, config and the saved files are untouched; :func:`undo_musicldm_compat`
restores the original method exactly.
"""

from __future__ import annotations

from types import MethodType
from typing import Any

import torch
import transformers
from transformers import ClapModel

_ATTR = "get_text_features"
_BEFORE = "_sadakit_get_text_features_before_compat"


def pooled_text_embeddings(output: Any) -> torch.Tensor:
    """The (batch, projection_dim) tensor in whatever ``get_text_features`` returned.

    transformers 4: the tensor itself. transformers 5: ``output.pooler_output`` (already
    projected and normalised), or, with ``return_dict=False``, the tuple's second entry
    (``to_tuple`` order: last_hidden_state, pooler_output, ...).
    """
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is not None:
        return pooled
    if isinstance(output, tuple) and len(output) > 1:
        return output[1]
    raise TypeError(f"cannot find pooled text embeddings in {type(output).__name__}")


def _pooled_text_features(self: ClapModel, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``get_text_features`` with the transformers 4 return type MusicLDM expects."""
    before = self.__dict__.get(_BEFORE)
    if before is not None:
        output = before(*args, **kwargs)
    else:
        output = type(self).get_text_features(self, *args, **kwargs)
    return pooled_text_embeddings(output)


def _transformers_returns_outputs() -> bool:
    """transformers >= 5 returns output objects from ``get_*_features``."""
    return int(transformers.__version__.split(".")[0]) >= 5


def _clap_encoder(pipe: Any) -> ClapModel | None:
    encoder = getattr(pipe, "text_encoder", None)
    return encoder if isinstance(encoder, ClapModel) else None


def is_musicldm_compat_applied(pipe: Any) -> bool:
    """Whether :func:`ensure_musicldm_compat` has patched this pipeline."""
    encoder = _clap_encoder(pipe)
    if encoder is None:
        return False
    current = encoder.__dict__.get(_ATTR)
    return isinstance(current, MethodType) and current.__func__ is _pooled_text_features


def ensure_musicldm_compat(pipe: Any) -> bool:
    """Patch ``pipe.text_encoder.get_text_features`` (instance only) to return a tensor.

    Returns True if this call applied the fix; False if it was already applied, is not
    needed (transformers < 5) or does not apply (text encoder is not a ``ClapModel``).
    Idempotent. A caller that got True owns the patch and may undo it.
    """
    encoder = _clap_encoder(pipe)
    if encoder is None or is_musicldm_compat_applied(pipe) or not _transformers_returns_outputs():
        return False
    if _ATTR in encoder.__dict__:  # someone else's instance patch: keep calling it
        encoder.__dict__[_BEFORE] = encoder.__dict__[_ATTR]
    encoder.__dict__[_ATTR] = MethodType(_pooled_text_features, encoder)
    return True


def undo_musicldm_compat(pipe: Any) -> bool:
    """Remove the patch, restoring the previous ``get_text_features``; True if removed."""
    if not is_musicldm_compat_applied(pipe):
        return False
    encoder = pipe.text_encoder
    before = encoder.__dict__.pop(_BEFORE, None)
    if before is None:
        del encoder.__dict__[_ATTR]
    else:
        encoder.__dict__[_ATTR] = before
    return True
