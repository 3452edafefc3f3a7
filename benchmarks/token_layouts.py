"""Token sparsity on the DiTs whose blocks mix grid tokens with others (HunyuanVideo's
[video, text] mask, Qwen-Image's rotary pair, Stable Audio's global token, Chroma's
single-stream [text, image] blocks), in the tests' configurations: the default config, token
sparsity alone, and token sparsity keeping every token (which must equal the full call).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/token_layouts.py

PSNR is over the reference's value range (``tests/plugin_checks.psnr``), against the
unaccelerated output of the same seed and sampler.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import diffusers
import torch

import sadakit
from sadakit.testing.dit_image_pipelines import tiny_chroma_pipeline
from sadakit.testing.dit_pipelines_2 import qwen_image_text, tiny_qwen_image_pipeline, tiny_stable_audio_pipeline
from sadakit.testing.video_pipelines_2 import HUNYUAN_PROMPT_TEMPLATE, tiny_hunyuan_video_pipeline

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from plugin_checks import psnr  # noqa: E402


def hunyuan_video() -> tuple[str, Any, Callable, bool]:
    pipe = tiny_hunyuan_video_pipeline()

    def run(seed: int = 0) -> torch.Tensor:
        return pipe(prompt=["a red ball rolling"], negative_prompt=["blurry"], true_cfg_scale=3.0, guidance_scale=6.0,
                    num_frames=9, height=48, width=64, num_inference_steps=30, max_sequence_length=16,
                    prompt_template=HUNYUAN_PROMPT_TEMPLATE, generator=torch.Generator().manual_seed(seed),
                    output_type="latent").frames

    return "HunyuanVideo, true CFG 3, 9 frames of 48 x 64 (grid 3 x 3 x 4)", pipe, run, True


def qwen_image() -> tuple[str, Any, Callable, bool]:
    pipe = tiny_qwen_image_pipeline()

    def run(seed: int = 0) -> torch.Tensor:
        embeds, mask = qwen_image_text(1, seed=10, pad=2)
        neg, neg_mask = qwen_image_text(1, seed=11)
        return pipe(prompt_embeds=embeds, prompt_embeds_mask=mask, negative_prompt_embeds=neg,
                    negative_prompt_embeds_mask=neg_mask, true_cfg_scale=4.0, height=64, width=96,
                    num_inference_steps=30, output_type="pt", generator=torch.Generator().manual_seed(seed)).images

    return "Qwen-Image, true CFG 4, 64 x 96 px (4 x 6 tokens)", pipe, run, True


def stable_audio() -> tuple[str, Any, Callable, bool]:
    pipe = tiny_stable_audio_pipeline()

    def run(seed: int = 0) -> torch.Tensor:
        return pipe(prompt=["a drum loop"], negative_prompt=["noise"], audio_end_in_s=1.0, num_inference_steps=30,
                    guidance_scale=7.0, output_type="pt", generator=torch.Generator().manual_seed(seed)).audios

    return "Stable Audio, CFG 7, 1 s (its own SDE solver)", pipe, run, False


def chroma() -> tuple[str, Any, Callable, bool]:
    pipe = tiny_chroma_pipeline()

    def run(seed: int = 0) -> torch.Tensor:
        return pipe(prompt=["a red square on the left", "a blue circle at the top"], negative_prompt=["blurry"] * 2,
                    num_inference_steps=30, height=96, width=128, max_sequence_length=16, output_type="pt",
                    generator=torch.Generator().manual_seed(seed)).images

    return "Chroma, CFG 5, 96 x 128 px (6 x 8 tokens), 2 prompts", pipe, run, True


def measure(pipe: Any, run: Callable, base: torch.Tensor, config: sadakit.SADAConfig | None) -> str:
    sadakit.accelerate(pipe, config)
    try:
        torch.manual_seed(0)  # the stochastic samplers draw their step noise from the global generator
        out = run()
        rep = sadakit.report(pipe)
    finally:
        sadakit.remove(pipe)
    share = 100 * rep.tokens_computed / max(rep.tokens_total, 1)
    return (f"{rep.network_calls} of {rep.denoiser_calls} computed, {rep.partial_calls} partial, block tokens "
            f"{rep.tokens_computed} / {rep.tokens_total} ({share:.0f}%), PSNR {psnr(out, base):.1f} dB, "
            f"max abs diff {(out - base).abs().max().item():.1e}")


def main() -> None:
    torch.set_num_threads(1)
    for make in (hunyuan_video, qwen_image, stable_audio, chroma):
        name, pipe, run, flow = make()
        print(f"## {name}")
        torch.manual_seed(0)
        print("default SADAConfig():", measure(pipe, run, run(), None))
        if flow:  # random-weight flow trajectories need the stochastic sampler to leave stable tokens
            pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                                   stochastic_sampling=True)
        torch.manual_seed(0)
        base = run()
        tokens_only = sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0)
        print("tokens only:", measure(pipe, run, base, tokens_only))
        every_token = sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0, anchor_window=1)
        print("tokens only, anchor_window=1 (every token kept):", measure(pipe, run, base, every_token))


if __name__ == "__main__":
    main()
