"""Median time of one CFG-batched (batch 2) call of each medium denoiser on this machine.

    .venv/bin/python benchmarks/bench_call_times.py
"""

import os
import time

import numpy as np
import torch

from sadakit.testing import tiny_flux_pipeline, tiny_musicldm_pipeline, tiny_sdxl_pipeline


def _median_call_ms(module, args, kwargs, repeats: int = 3) -> float:
    with torch.no_grad():
        module(*args, **kwargs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            module(*args, **kwargs)
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main():
    """One CFG-batched denoiser call at the medium size costs tens of milliseconds or more."""
    torch.set_num_threads(os.cpu_count() or 1)  # compute-bound: use every core
    sdxl = tiny_sdxl_pipeline(size="medium").unet
    sdxl_ms = _median_call_ms(
        sdxl,
        (torch.randn(2, 4, 32, 32), 500),
        {
            "encoder_hidden_states": torch.randn(2, 77, sdxl.config.cross_attention_dim),
            "added_cond_kwargs": {"text_embeds": torch.randn(2, 64), "time_ids": torch.zeros(2, 6)},
        },
    )
    flux = tiny_flux_pipeline(size="medium").transformer
    flux_ms = _median_call_ms(
        flux,
        (),
        {
            "hidden_states": torch.randn(2, 256, 64),
            "encoder_hidden_states": torch.randn(2, 64, flux.config.joint_attention_dim),
            "pooled_projections": torch.randn(2, flux.config.pooled_projection_dim),
            "timestep": torch.full((2,), 0.5),
            "guidance": torch.full((2,), 3.5),
            "img_ids": torch.zeros(256, 3),
            "txt_ids": torch.zeros(64, 3),
        },
    )
    music = tiny_musicldm_pipeline(size="medium").unet
    music_ms = _median_call_ms(
        music,
        (torch.randn(2, 8, 128, 16), 500),
        {"encoder_hidden_states": None, "class_labels": torch.randn(2, music.config.projection_class_embeddings_input_dim)},
    )
    print(f"medium per-call ms (batch 2): sdxl {sdxl_ms:.0f}, flux {flux_ms:.0f}, musicldm {music_ms:.0f}")


if __name__ == "__main__":
    main()
