"""Offline test fixtures: tiny random-weight pipelines of the real diffusers classes.

Nothing here downloads anything; see :mod:`sadakit.testing.pipelines` for the sizes.
"""

from sadakit.testing.pipelines import (
    SIZES,
    activate_controlnet,
    tiny_flux_controlnet_pipeline,
    tiny_flux_pipeline,
    tiny_musicldm_pipeline,
    tiny_sd_controlnet_pipeline,
    tiny_sd_pipeline,
    tiny_sdxl_controlnet_pipeline,
    tiny_sdxl_pipeline,
    tiny_wan_pipeline,
)
from sadakit.testing.dit_image_pipelines import tiny_chroma_pipeline, tiny_sd3_pipeline
from sadakit.testing.dit_pipelines_2 import tiny_qwen_image_pipeline, tiny_stable_audio_pipeline
from sadakit.testing.video_pipelines import tiny_cogvideox_pipeline, tiny_ltx_pipeline
from sadakit.testing.video_pipelines_2 import (tiny_hunyuan_video_pipeline, tiny_wan_experts_pipeline,
                                               tiny_wan_i2v_pipeline)
from sadakit.testing.tokenizers import clip_tokenizer, roberta_tokenizer, t5_tokenizer

__all__ = [
    "SIZES",
    "activate_controlnet",
    "clip_tokenizer",
    "roberta_tokenizer",
    "t5_tokenizer",
    "tiny_chroma_pipeline",
    "tiny_cogvideox_pipeline",
    "tiny_flux_controlnet_pipeline",
    "tiny_flux_pipeline",
    "tiny_hunyuan_video_pipeline",
    "tiny_ltx_pipeline",
    "tiny_musicldm_pipeline",
    "tiny_qwen_image_pipeline",
    "tiny_sd_controlnet_pipeline",
    "tiny_sd_pipeline",
    "tiny_sdxl_controlnet_pipeline",
    "tiny_sd3_pipeline",
    "tiny_sdxl_pipeline",
    "tiny_stable_audio_pipeline",
    "tiny_wan_experts_pipeline",
    "tiny_wan_i2v_pipeline",
    "tiny_wan_pipeline",
]
