"""SADA on Qwen-Image text-to-image (tiny, random weights), through the public plugin contract:
flow matching, packed latents on the img_shapes grid, true CFG as two cache-context streams,
token sparsity with the rotary pair (image_freqs, text_freqs) cut on its image element only.

No tiny Qwen2.5-VL text encoder is built: the pipeline runs with ``text_encoder=None`` and
``prompt_embeds`` / ``prompt_embeds_mask`` passed directly. Real forwards are counted with a
pre-hook on the transformer's first projection (``img_in``).
"""

import diffusers
import pytest
import torch

import sadakit
from sadakit.errors import UnsupportedPipelineError
from sadakit.plugins.image import qwen_image
from sadakit.testing.dit_pipelines_2 import qwen_image_text, tiny_qwen_image_pipeline
from plugin_checks import Forwards, plain, psnr


@pytest.fixture(scope="module")
def qwen_pipe():
    return tiny_qwen_image_pipeline()


@pytest.fixture
def qwen(qwen_pipe):
    yield from plain(qwen_pipe)


def run(pipe, steps=30, seed=0, cfg=True, batch=1, height=64, width=96):
    torch.manual_seed(seed)  # the stochastic sampler draws its step noise from the global generator
    embeds, mask = qwen_image_text(batch, seed=10, pad=2)
    kw = {}
    if cfg:
        neg, neg_mask = qwen_image_text(batch, seed=11)
        kw = dict(negative_prompt_embeds=neg, negative_prompt_embeds_mask=neg_mask, true_cfg_scale=4.0)
    return pipe(prompt_embeds=embeds, prompt_embeds_mask=mask, height=height, width=width,
                num_inference_steps=steps, output_type="pt", generator=torch.Generator().manual_seed(seed),
                **kw).images


@pytest.mark.parametrize("batch", [1, 2])
def test_qwen_image_skips_calls_with_true_cfg_and_remove_restores(qwen, batch):
    base = run(qwen, batch=batch)
    other_seed = run(qwen, seed=1, batch=batch)
    forwards = Forwards(qwen.transformer.img_in)
    try:
        sadakit.accelerate(qwen)
        out = run(qwen, batch=batch)
    finally:
        forwards.close()
    rep = sadakit.report(qwen)
    assert rep.family == "qwen-image" and rep.streams == ["cond", "uncond"]
    assert rep.denoiser_calls == 60 and rep.batch_size == 2 * batch  # the rows of both streams
    assert rep.network_calls == forwards.count < 60, rep.decisions
    assert rep.skipped_calls == 60 - forwards.count
    assert out.shape == base.shape == (batch, 3, 64, 96) and torch.isfinite(out).all()
    close, apart = psnr(out, base), psnr(other_seed, base)
    assert close > 30 and close > apart + 10, (close, apart)
    sadakit.remove(qwen)
    assert torch.equal(run(qwen, batch=batch), base)


def test_qwen_image_without_cfg_is_one_stream(qwen):
    sadakit.accelerate(qwen)
    out = run(qwen, cfg=False)
    rep = sadakit.report(qwen)
    assert rep.denoiser_calls == 30 and rep.skipped_calls > 0 and rep.streams in ([], ["cond"])
    assert torch.isfinite(out).all()


def test_the_token_grid_is_img_shapes_row_major():
    m = torch.arange(2 * 24 * 64, dtype=torch.float32).reshape(2, 24, 64)
    grid = qwen_image.qwen_image_grid(m, {"img_shapes": [[(1, 4, 6)]] * 2})
    assert grid.shape == (2, 4, 6)
    torch.testing.assert_close(grid[1, 2, 3], m[1, 2 * 6 + 3].mean())
    with pytest.raises(UnsupportedPipelineError, match="img_shapes"):
        qwen_image.qwen_image_grid(m, {})


class BlockTokens:
    """Tokens each block computes, seen inside it: image (``img_norm1``) and text (``txt_norm1``),
    and the sizes of the rotary pair its attention receives."""

    def __init__(self, pipe):
        self.image, self.text, self.rotary = [], [], []
        blocks = pipe.transformer.transformer_blocks
        self._handles = [b.img_norm1.register_forward_pre_hook(lambda m, a: self.image.append(a[0].shape[1]))
                         for b in blocks]
        self._handles += [b.txt_norm1.register_forward_pre_hook(lambda m, a: self.text.append(a[0].shape[1]))
                          for b in blocks]
        self._handles += [b.attn.register_forward_pre_hook(self._rotary, with_kwargs=True) for b in blocks]

    def _rotary(self, module, args, kwargs):
        image_freqs, text_freqs = kwargs["image_rotary_emb"]
        self.rotary.append((image_freqs.shape[0], text_freqs.shape[0]))

    def close(self):
        for h in self._handles:
            h.remove()


def stochastic(pipe):
    # random-weight flow trajectories look unstable everywhere to the deterministic criterion;
    # the stochastic sampler's step noise leaves tokens it calls stable
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                           stochastic_sampling=True)


GRID = 4 * 6  # 64 x 96 px: packed 4 x 6


def test_qwen_image_partial_calls_cut_only_the_image_rotary_table(qwen):
    stochastic(qwen)
    base = run(qwen, batch=2)
    sadakit.accelerate(qwen, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0))
    seen = BlockTokens(qwen)
    try:
        out = run(qwen, batch=2)
    finally:
        seen.close()
    rep = sadakit.report(qwen)
    blocks = len(qwen.transformer.transformer_blocks)
    assert rep.partial_calls >= 2 and rep.network_calls == 60, rep.decisions
    assert max(seen.image) == GRID and min(seen.image) < GRID
    assert len(set(seen.text)) == 1  # text tokens never pruned
    # the image table follows the kept tokens; the text table passes whole
    assert seen.rotary == [(n, seen.text[0]) for n in seen.image]
    # two prompts per call share one token set (the rotary table has no batch dimension)
    assert rep.tokens_computed == 2 * sum(seen.image) < rep.tokens_total == 60 * blocks * GRID * 2
    assert not [n for n in rep.notes if "matches no grid" in n], rep.notes
    assert torch.isfinite(out).all() and psnr(out, base) > 25, psnr(out, base)
    sadakit.remove(qwen)
    assert torch.equal(run(qwen, batch=2), base)


def test_a_partial_call_keeping_every_token_is_the_full_call(qwen):
    base = run(qwen)
    sadakit.accelerate(qwen, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0,
                                                                anchor_window=1))
    out = run(qwen)
    rep = sadakit.report(qwen)
    assert rep.partial_calls >= 40 and rep.tokens_computed == rep.tokens_total, rep.decisions
    torch.testing.assert_close(out, base, rtol=1e-4, atol=1e-5)


def test_every_block_is_a_token_block(qwen):
    blocks = qwen_image.plugin.sadakit_token_blocks(qwen, qwen.transformer)
    assert len(blocks) == len(qwen.transformer.transformer_blocks) and all(b.output_index == 1 for b in blocks)
    assert blocks[0].token_args["image_rotary_emb"].elements == (0,)


def test_a_non_flow_scheduler_is_refused_before_anything_changes(qwen):
    qwen.scheduler = diffusers.DDIMScheduler()
    with pytest.raises(UnsupportedPipelineError, match="not a flow-matching scheduler"):
        sadakit.accelerate(qwen)
    assert not sadakit.is_accelerated(qwen)


def test_edit_pipelines_are_left_unclaimed(qwen):
    img2img = diffusers.QwenImageImg2ImgPipeline(scheduler=qwen.scheduler, vae=qwen.vae, text_encoder=None,
                                                 tokenizer=None, transformer=qwen.transformer)
    with pytest.raises(UnsupportedPipelineError, match="No sadakit plugin handles"):
        sadakit.accelerate(img2img)
    assert "QwenImagePipeline" in qwen_image.plugin.sadakit_supported_pipelines()
