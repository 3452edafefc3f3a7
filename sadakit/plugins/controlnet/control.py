"""How a ControlNet call maps onto the denoiser call that follows it.

The runtime calls the control branch first each step, decides there (skip / compute which
rows / token plan) and hands the plan to the denoiser call. So it must know, from the control
call alone, which denoiser latent it stands for:

* normally the ControlNet sees exactly the denoiser's latent (all rows);
* in guess mode with classifier-free guidance, diffusers runs the ControlNet on the
  conditional half only (``control_model_input = latents``) and pads the unconditional half of
  the residuals with zeros. The denoiser latent is then ``cat([sample, sample])`` (both halves
  are the same scaled latent) and control row i feeds denoiser row ``B/2 + i``.
"""

from __future__ import annotations

from typing import Any

import torch

from ...spec import ControlSpec


def _cfg_on(pipe: Any) -> bool:
    try:
        return bool(pipe.do_classifier_free_guidance)
    except AttributeError:
        return False


def _check_sizes(pipe: Any, name: str, cond: Any, expected: tuple, got_of) -> None:
    """Raise a clear error when a control input does not cover the latent it conditions."""
    for i, c in enumerate(cond if isinstance(cond, (list, tuple)) else [cond]):
        if not isinstance(c, torch.Tensor):
            continue
        got = got_of(c)
        if got is not None and got != expected:
            which = f"{name}[{i}]" if isinstance(cond, (list, tuple)) else name
            raise ValueError(
                f"{type(pipe).__name__}: ControlNet input {which} has size {got} but the latent needs {expected}; "
                "give the control image the generated image's height and width (the pipelines resize PIL/array "
                "control images themselves; tensors passed to the ControlNet directly must already match)"
            )


def guess_mode_denoiser_sample(sample: torch.Tensor, pipe: Any, arguments: dict) -> torch.Tensor:
    """The denoiser latent a (SD/SDXL) ControlNet call stands for; checks the control image size.

    The conditioning embedding downsamples the control image by the VAE factor, so its (H, W)
    must be the latent's times ``pipe.vae_scale_factor``.
    """
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    expected = (sample.shape[-2] * factor, sample.shape[-1] * factor)
    _check_sizes(pipe, "controlnet_cond", arguments.get("controlnet_cond"), expected, lambda c: tuple(c.shape[-2:]))
    if arguments.get("guess_mode") and _cfg_on(pipe):
        return torch.cat([sample, sample])
    return sample


def cond_half_rows(control_batch: int, denoiser_batch: int) -> list[int]:
    """Denoiser row fed by each control row: identity, or the conditional half in guess mode."""
    if control_batch == denoiser_batch:
        return list(range(control_batch))
    if denoiser_batch == 2 * control_batch:
        return [control_batch + i for i in range(control_batch)]
    raise ValueError(
        f"a ControlNet call with batch {control_batch} cannot feed a denoiser batch of {denoiser_batch}; "
        "expected the same batch, or half of it (guess mode with classifier-free guidance)"
    )


def unet_control_spec(pipe: Any) -> ControlSpec:
    """``pipe.controlnet`` (a ControlNetModel or the MultiControlNetModel wrapper)."""
    return ControlSpec(
        module=pipe.controlnet,
        sample_arg="sample",
        timestep_arg="timestep",
        to_denoiser_sample=guess_mode_denoiser_sample,
        control_rows=cond_half_rows,
    )


def flux_denoiser_sample(sample: torch.Tensor, pipe: Any, arguments: dict) -> torch.Tensor:
    """Flux ControlNets see the transformer's packed latent itself; a packed control latent
    (InstantX style, VAE-encoded, 3-D) must have as many tokens as the image. Pixel-space
    control images (XLabs style, with an input hint block) are not checked here."""
    _check_sizes(
        pipe,
        "controlnet_cond",
        arguments.get("controlnet_cond"),
        (sample.shape[1],),
        lambda c: (c.shape[1],) if c.dim() == 3 else None,
    )
    return sample


def flux_control_spec(pipe: Any) -> ControlSpec:
    """``pipe.controlnet`` (FluxControlNetModel or FluxMultiControlNetModel): same latent, same rows."""
    return ControlSpec(
        module=pipe.controlnet,
        sample_arg="hidden_states",
        timestep_arg="timestep",
        to_denoiser_sample=flux_denoiser_sample,
        unbatched_args=frozenset({"img_ids", "txt_ids"}),  # (tokens, 3), as for the Flux transformer
    )


__all__ = ["cond_half_rows", "flux_control_spec", "flux_denoiser_sample", "guess_mode_denoiser_sample", "unet_control_spec"]
