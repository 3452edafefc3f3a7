"""SADA on HunyuanVideo text-to-video (tiny, random weights), through the public plugin contract:
flow matching fed 1000 * sigma, embedded (distilled) guidance, optional true CFG as two calls in
cache contexts, a (B, C, F, H, W) latent patchified 1 x 2 x 2; token sparsity in the double- and
single-stream blocks, whose attention mask covers [video, text] keys (its text entries kept)."""

import diffusers
import pytest
import torch

import sadakit
from sadakit.errors import UnsupportedPipelineError
from sadakit.plugins.video import hunyuan_video
from sadakit.testing.video_pipelines_2 import HUNYUAN_PROMPT_TEMPLATE, tiny_hunyuan_video_pipeline
from plugin_checks import Forwards, plain, psnr


FRAMES, HEIGHT, WIDTH = 9, 48, 64  # latent 3 x 6 x 8, token grid 3 x 3 x 4 (non-square)


@pytest.fixture(scope="module")
def hv_pipe():
    return tiny_hunyuan_video_pipeline()


@pytest.fixture
def pipe(hv_pipe):
    yield from plain(hv_pipe)


def run(pipe, steps=30, seed=0, true_cfg_scale=3.0, batch=1):
    torch.manual_seed(seed)  # the stochastic sampler draws its step noise from the global generator
    return pipe(prompt=["a red ball rolling"] * batch, negative_prompt=["blurry"] * batch, true_cfg_scale=true_cfg_scale,
                guidance_scale=6.0, num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=steps,
                max_sequence_length=16, prompt_template=HUNYUAN_PROMPT_TEMPLATE,
                generator=torch.Generator().manual_seed(seed), output_type="latent").frames


@pytest.mark.parametrize("batch", [1, 2])
def test_hunyuan_video_skips_calls_with_true_cfg_and_remove_restores(pipe, batch):
    base = run(pipe, batch=batch)
    forwards = Forwards(pipe.transformer.x_embedder)
    try:
        sadakit.accelerate(pipe)
        out = run(pipe, batch=batch)
    finally:
        forwards.close()
    rep = sadakit.report(pipe)
    assert rep.family == "hunyuan_video" and sorted(rep.streams) == ["cond", "uncond"]
    assert rep.denoiser_calls == 60 and rep.batch_size == 2 * batch  # two calls per step (cond, uncond)
    assert rep.network_calls == forwards.count < 60, rep.decisions
    assert rep.skipped_calls == 60 - forwards.count
    assert not [n for n in rep.notes if "matches no grid" in n or "names no eligible block" in n], rep.notes
    assert torch.isfinite(out).all() and psnr(out, base) > 30, psnr(out, base)
    sadakit.remove(pipe)
    assert torch.equal(run(pipe, batch=batch), base)


def test_hunyuan_video_distilled_guidance_one_call_per_step(pipe):
    base = run(pipe, true_cfg_scale=1.0)
    forwards = Forwards(pipe.transformer.x_embedder)
    try:
        sadakit.accelerate(pipe)
        out = run(pipe, true_cfg_scale=1.0)
    finally:
        forwards.close()
    rep = sadakit.report(pipe)
    assert rep.denoiser_calls == 30 and rep.batch_size == 1
    assert rep.network_calls == forwards.count < 30, rep.decisions
    assert rep.skipped_calls == 30 - forwards.count
    assert torch.isfinite(out).all() and psnr(out, base) > 30, psnr(out, base)
    sadakit.remove(pipe)
    assert torch.equal(run(pipe, true_cfg_scale=1.0), base)


GRID = 3 * 3 * 4


def stochastic(pipe):
    # random-weight flow trajectories look unstable everywhere to the deterministic criterion;
    # the stochastic sampler's step noise leaves tokens it calls stable (as in the Flux tests)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                           stochastic_sampling=True)


class BlockTokens:
    """Tokens each block computes, seen inside it (after sadakit's selection): the double-stream
    block normalises video (``norm1``) and text (``norm1_context``) apart, the single-stream block
    [video, text] together (``norm``); the attention mask each block's attention receives."""

    def __init__(self, pipe):
        self.video, self.text, self.joint, self.mask_keys = [], [], [], []
        t = pipe.transformer
        hooks = [(b.norm1, self.video) for b in t.transformer_blocks]
        hooks += [(b.norm1_context, self.text) for b in t.transformer_blocks]
        hooks += [(b.norm, self.joint) for b in t.single_transformer_blocks]
        self._handles = [m.register_forward_pre_hook(lambda m, a, into=into: into.append(a[0].shape[1]))
                         for m, into in hooks]
        self._handles += [b.attn.register_forward_pre_hook(self._mask, with_kwargs=True)
                          for b in [*t.transformer_blocks, *t.single_transformer_blocks]]

    def _mask(self, module, args, kwargs):
        self.mask_keys.append(kwargs["attention_mask"].shape[-1])

    def close(self):
        for h in self._handles:
            h.remove()


def test_partial_calls_on_the_frame_height_width_grid_keep_text(pipe):
    stochastic(pipe)
    base = run(pipe)
    sadakit.accelerate(pipe, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0))
    seen = BlockTokens(pipe)
    try:
        out = run(pipe)
    finally:
        seen.close()
    rep = sadakit.report(pipe)
    text = seen.text[0]
    assert rep.partial_calls >= 2 and rep.network_calls == 60, rep.decisions
    assert max(seen.video) == GRID and min(seen.video) < GRID
    assert set(seen.text) == {text}  # text tokens are never pruned
    # the single-stream block sees the double-stream block's video tokens, and the text
    assert [j - text for j in seen.joint] == seen.video
    # the mask's key axis follows the kept video tokens, its text entries kept
    assert seen.mask_keys == [v + text for v in seen.video for _ in range(2)]
    assert rep.tokens_computed == 2 * sum(seen.video) < rep.tokens_total == 60 * 2 * GRID  # 2 blocks
    assert not [n for n in rep.notes if "matches no grid" in n], rep.notes
    assert torch.isfinite(out).all() and psnr(out, base) > 30, psnr(out, base)
    sadakit.remove(pipe)
    assert torch.equal(run(pipe), base)


def test_a_partial_call_keeping_every_token_is_the_full_call(pipe):
    """anchor_window=1 makes every token required: partial calls that gather all tokens (their
    rotary rows, the mask's key entries) and must reproduce the full call."""
    base = run(pipe, batch=2)
    sadakit.accelerate(pipe, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0,
                                                                anchor_window=1))
    out = run(pipe, batch=2)
    rep = sadakit.report(pipe)
    assert rep.partial_calls >= 40 and rep.tokens_computed == rep.tokens_total, rep.decisions
    torch.testing.assert_close(out, base, rtol=1e-4, atol=1e-5)


def test_both_block_kinds_are_token_blocks(pipe):
    blocks = hunyuan_video.plugin.sadakit_token_blocks(pipe, pipe.transformer)
    assert [b.name for b in blocks] == ["transformer_blocks.0", "single_transformer_blocks.0"]
    assert [sorted(b.token_args) for b in blocks] == [["attention_mask", "freqs_cis"],
                                                       ["attention_mask", "image_rotary_emb"]]
    assert all(b.output_index == 0 and b.token_args["attention_mask"].others == "trailing" for b in blocks)
    assert hunyuan_video.plugin.sadakit_output_kind(pipe) == "video"


def test_the_token_grid_is_the_patch_grid(pipe):
    to_grid = hunyuan_video.hunyuan_video_grid(pipe)
    latent = torch.zeros(1, 8, 3, 6, 8)
    latent[0, 2, 1, 5, 6] = 1.0  # frame 1, patch row 2, patch column 3
    grid = to_grid(latent, {})
    assert grid.shape == (1, 3, 3, 4)
    assert grid.flatten().nonzero().flatten().tolist() == [1 * 12 + 2 * 4 + 3]


def test_hunyuan_video_flow_time_is_the_schedulers_sigma(pipe):
    sched = pipe.scheduler
    sched.set_timesteps(30)
    param = hunyuan_video.plugin.sadakit_parameterization(pipe)
    for t, sigma in zip(sched.timesteps, sched.sigmas):
        tau = param.level(t.expand(2), torch.device("cpu")).tau
        torch.testing.assert_close(tau.expand(2), sigma.expand(2).float())


def test_a_vp_scheduler_is_refused_before_anything_changes(pipe):
    pipe.scheduler = diffusers.DDIMScheduler()
    with pytest.raises(UnsupportedPipelineError, match="not a flow-matching scheduler"):
        sadakit.accelerate(pipe)
    assert not sadakit.is_accelerated(pipe)


def test_an_image_conditioned_transformer_is_refused(pipe):
    class Config:
        image_condition_type = "token_replace"

    class Fake:
        transformer = type("T", (), {"config": Config()})()

    assert "image-conditioned" in hunyuan_video._image_conditioned(Fake())
    assert hunyuan_video._image_conditioned(pipe) is None


def test_registered_as_a_supported_pipeline():
    assert "HunyuanVideoPipeline" in sadakit.supported_pipelines()


@pytest.mark.slow  # ~20 s of tracing on this CPU
def test_partial_calls_compile_fullgraph_once(pipe):
    """The trailing mask entries and the shared rotary rows are cut by tensor work alone: the
    transformer compiles with ``fullgraph=True`` (dynamo's eager backend traces as inductor
    would), gives the eager result, and a second generation reuses the graphs."""
    from torch._dynamo.utils import counters

    stochastic(pipe)
    config = sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0)
    sadakit.accelerate(pipe, config)
    eager = run(pipe, steps=8)
    decisions = sadakit.report(pipe).decisions
    assert "P" in decisions, decisions
    torch._dynamo.reset()
    counters.clear()
    try:
        pipe.transformer.compile(backend="eager", fullgraph=True)
        first = run(pipe, steps=8)
        assert sadakit.report(pipe).decisions == decisions and torch.equal(first, eager)
        graphs = counters["stats"]["unique_graphs"]
        assert graphs > 0 and torch.equal(run(pipe, steps=8), eager)
        assert counters["stats"]["unique_graphs"] == graphs
    finally:
        sadakit.remove(pipe)
        pipe.transformer._compiled_call_impl = None
        torch._dynamo.reset()
