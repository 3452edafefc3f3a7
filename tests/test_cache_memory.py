"""Cache memory in proportion: what the report says is held equals the documented formula.

docs/design.md ("Memory") gives it: the drift history (3 nodes of x_flow and drift) and the
extrapolation values (``history_len`` entries), each one float32 latent per row, plus one
residual per row and token for each block that can be pruned under the config (with the
default ``token_resolutions="highest"``, only the blocks with the most tokens).
"""

import pytest
from diffusers.models.attention import BasicTransformerBlock

import sadakit


class BlockShapes:
    def __init__(self, unet):
        self.shapes = {}
        self._handles = [m.register_forward_pre_hook(self._hook(n), with_kwargs=True)
                         for n, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)]

    def _hook(self, name):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.shapes.setdefault(name, (hidden.shape[1], hidden.shape[2], hidden.element_size()))
        return hook

    def close(self):
        for h in self._handles:
            h.remove()


@pytest.mark.parametrize("resolutions", ["highest", "all"])
def test_cache_bytes_match_the_formula(sdxl, resolutions):
    config = sadakit.SADAConfig(token_resolutions=resolutions)
    sadakit.accelerate(sdxl, config)
    shapes = BlockShapes(sdxl.unet)
    try:
        sdxl(prompt=["a", "b"], num_inference_steps=20, height=64, width=96, output_type="pt")
    finally:
        shapes.close()
    report = sadakit.report(sdxl)
    rows = 4  # 2 prompts x CFG
    latent = 4 * 8 * 12
    state = (3 * 2 + config.history_len) * rows * latent * 4
    most = max(n for n, _, _ in shapes.shapes.values())
    prunable = [s for s in shapes.shapes.values() if resolutions == "all" or s[0] == most]
    residuals = sum(rows * n * c * size for n, c, size in prunable)
    assert report.cache_bytes == state + residuals
    assert len(prunable) < len(shapes.shapes) or resolutions == "all"
