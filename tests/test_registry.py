"""The plugin contract: third-party plugins are asked first and answer through the same hooks."""

import torch

import sadakit
from sadakit import DenoiserSpec
from sadakit.plugins.unet_common import unet_parameterization, unet_token_blocks


class OverridingPlugin:
    """A third-party plugin claiming SDXL pipelines with its own defaults (no token sparsity)."""

    def __init__(self):
        self.asked = []

    @sadakit.hookimpl
    def sadakit_family(self, pipe):
        self.asked.append(type(pipe).__name__)
        return "my-sdxl" if type(pipe).__name__ == "StableDiffusionXLPipeline" else None

    @sadakit.hookimpl
    def sadakit_supported_pipelines(self):
        return ["StableDiffusionXLPipeline"]

    @sadakit.hookimpl
    def sadakit_denoiser(self, pipe):
        return DenoiserSpec(module=pipe.unet)

    @sadakit.hookimpl
    def sadakit_parameterization(self, pipe):
        return unet_parameterization(pipe)

    @sadakit.hookimpl
    def sadakit_default_config(self, pipe):
        return sadakit.SADAConfig(token_sparsity=False, late_phase_start=None)


def test_third_party_plugin_is_asked_first(sdxl):
    plugin = OverridingPlugin()
    sadakit.register_plugin(plugin, name="test-override")
    try:
        sadakit.accelerate(sdxl)
        out = sdxl(prompt="x", num_inference_steps=10, height=64, width=64, output_type="pt").images
        rep = sadakit.report(sdxl)
        assert rep.family == "my-sdxl" and plugin.asked == ["StableDiffusionXLPipeline"]
        assert rep.tokens_total == 0 and rep.partial_calls == 0  # its defaults, not the built-in's
        assert torch.isfinite(out).all()
        sadakit.remove(sdxl)
    finally:
        sadakit.unregister_plugin(name="test-override")
    sadakit.accelerate(sdxl)
    assert sadakit.default_config(sdxl).token_sparsity
    sadakit.remove(sdxl)


def test_flops_are_measured_per_block(sdxl):
    sadakit.accelerate(sdxl, sadakit.SADAConfig(skip_steps=False, max_token_fraction=1.0))
    sdxl(prompt="x", num_inference_steps=16, height=64, width=64, output_type="pt")
    rep = sadakit.report(sdxl)
    assert rep.flops_per_call and rep.flops_per_call > 0
    assert rep.partial_calls > 0 and 0 < rep.flops_saved < rep.flops_per_call * rep.partial_calls
    assert rep.cache_bytes > 0


def test_unet_token_blocks_cover_every_transformer_block(sdxl):
    from diffusers.models.attention import BasicTransformerBlock

    blocks = unet_token_blocks(sdxl.unet)
    assert len(blocks) == sum(isinstance(m, BasicTransformerBlock) for m in sdxl.unet.modules()) > 0


def test_report_groups_rows_that_decided_alike():
    """128 rows that all decided alike print as one line; rows that differ keep their own."""
    from sadakit.runtime.report import GenerationReport

    n = 128
    computed, skipped = [27] * n, [23] * n
    computed[5], skipped[5] = 30, 20
    text = str(GenerationReport(family="f", parameterization="p", denoiser_calls=50, network_calls=30,
                                per_sample_computed=computed, per_sample_skipped=skipped, per_sample_partial=[0] * n))
    row_lines = [l.strip() for l in text.splitlines() if l.strip().startswith("row")]
    assert row_lines == ["rows 0-4: computed 27 (partial 0), skipped 23", "row 5: computed 30 (partial 0), skipped 20",
                         "rows 6-127: computed 27 (partial 0), skipped 23"]
