"""Wan 2.2 A14B's two experts (``transformer`` for the high-noise steps, ``transformer_2`` for
the low-noise ones), text-to-video and image-to-video, through :attr:`sadakit.DenoiserSpec.experts`:
every call of both experts and both CFG branches is served and counted, extrapolation never
spans the switch, token blocks of both experts prune, and ``remove`` restores both."""

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

import sadakit
from sadakit.testing import tiny_wan_experts_pipeline
from plugin_checks import plain, psnr

FRAMES, HEIGHT, WIDTH = 9, 48, 64  # non-square: a 3 x 3 x 4 token grid (36 tokens)
GRID_TOKENS = 3 * 3 * 4


@pytest.fixture(scope="module")
def t2v_pipe():
    return tiny_wan_experts_pipeline(seed=3)


@pytest.fixture(scope="module")
def i2v_pipe():
    return tiny_wan_experts_pipeline(seed=4, image_to_video=True, boundary_ratio=0.9)


@pytest.fixture
def t2v(t2v_pipe):
    yield from plain(t2v_pipe)


@pytest.fixture
def i2v(i2v_pipe):
    yield from plain(i2v_pipe)


def run(pipe, steps=30, seed=0, guidance_scale=4.0):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    kwargs = dict(num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=steps,
                  guidance_scale=guidance_scale, generator=generator, output_type="latent")
    if isinstance(pipe, diffusers.WanImageToVideoPipeline):
        g = torch.Generator().manual_seed(seed + 1)
        image = Image.fromarray((np.random.default_rng(seed).random((HEIGHT, WIDTH, 3)) * 255).astype("uint8"))
        # prompt embeddings given directly: the I2V pipeline's prompt cleaning needs ftfy, not installed here
        kwargs.update(image=image, prompt_embeds=torch.randn(1, 16, 32, generator=g),
                      negative_prompt_embeds=torch.randn(1, 16, 32, generator=g))
    else:
        kwargs.update(prompt="a red ball rolling", negative_prompt="blurry")
    return pipe(**kwargs).frames


class ExpertCalls:
    """Which transformer each real forward ran in, in call order (pre-hooks on the patch embeddings)."""

    def __init__(self, pipe):
        self.order: list[str] = []
        self._handles = [
            getattr(pipe, name).patch_embedding.register_forward_pre_hook(
                lambda module, args, name=name: self.order.append(name))
            for name in ("transformer", "transformer_2")
        ]

    def count(self, name):
        return self.order.count(name)

    def close(self):
        for h in self._handles:
            h.remove()


def first_low_noise_call(pipe, steps):
    """Index of the first denoiser call that reaches transformer_2 (as the pipeline decides it)."""
    pipe.scheduler.set_timesteps(steps)
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    step = next(i for i, t in enumerate(pipe.scheduler.timesteps) if t < boundary)
    return 2 * step  # two CFG calls per step


@pytest.mark.parametrize("which", ["t2v", "i2v"])
def test_both_experts_are_served_counted_and_restored(which, request):
    pipe = request.getfixturevalue(which)
    base = run(pipe)
    calls = ExpertCalls(pipe)
    try:
        sadakit.accelerate(pipe)
        out = run(pipe)
    finally:
        calls.close()
    rep = sadakit.report(pipe)
    assert rep.denoiser_calls == 60 and rep.streams == ["cond", "uncond"]
    switch = first_low_noise_call(pipe, 30)
    assert rep.calls_by_module == {"transformer": switch, "transformer_2": 60 - switch}
    # the report's network calls per module are the forwards that really ran in each
    assert rep.network_calls_by_module == {"transformer": calls.count("transformer"),
                                           "transformer_2": calls.count("transformer_2")}
    assert calls.count("transformer_2") < 60 - switch, rep.decisions  # the low-noise expert skips calls
    assert rep.network_calls == len(calls.order) < 50
    # extrapolation never spans the switch: the new expert's first steps are computed (history of order + 1)
    assert set(rep.decisions[switch: switch + 6]) <= {"F", "P"}, rep.decisions
    assert any("expert switch from transformer to transformer_2" in n for n in rep.notes), rep.notes
    assert torch.isfinite(out).all() and psnr(out, base) > 35
    sadakit.remove(pipe)
    for name in ("transformer", "transformer_2"):
        module = getattr(pipe, name)
        # (diffusers' own cache_context leaves an empty registry on a transformer that has run)
        assert not getattr(getattr(module, "_diffusers_hook", None), "hooks", None)
        assert "forward" not in module.__dict__
        assert "_compiled_call_impl" not in module.__dict__ or module._compiled_call_impl is None
    assert torch.equal(run(pipe), base)


def test_the_history_restarts_at_the_switch(t2v):
    """After the switch, no skipped call is filled from the high-noise expert's outputs: with a
    history restarted at the switch, a plan may skip only once order + 1 low-noise calls are in."""
    config = sadakit.SADAConfig(budget=0.34)  # a plan that would skip right after the switch
    sadakit.accelerate(t2v, config)
    run(t2v)
    rep = sadakit.report(t2v)
    switch = first_low_noise_call(t2v, 30)
    order = config.budget_order
    steps = rep.decisions[switch::2]
    assert steps[: order + 1] == "F" * (order + 1), rep.decisions
    assert "S" in steps[order + 1:], rep.decisions
    assert "S" in rep.decisions[:switch], rep.decisions  # the budget plan skips in the first expert too


def test_token_sparsity_prunes_in_both_experts(t2v):
    t2v.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=True)
    base = run(t2v, steps=16)
    seen = {"transformer": [], "transformer_2": []}
    handles = [block.norm1.register_forward_pre_hook(lambda m, a, name=name: seen[name].append(a[0].shape[1]))
               for name in seen for block in getattr(t2v, name).blocks]
    try:
        sadakit.accelerate(t2v, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0))
        out = run(t2v, steps=16)
    finally:
        for h in handles:
            h.remove()
    rep = sadakit.report(t2v)
    for name, tokens in seen.items():
        assert max(tokens) == GRID_TOKENS and min(tokens) < GRID_TOKENS, (name, rep.decisions)
    assert rep.tokens_computed == sum(map(sum, seen.values())) < rep.tokens_total
    assert rep.tokens_total == 32 * 2 * GRID_TOKENS  # 32 calls x 2 blocks, each counted in the expert it ran in
    assert torch.isfinite(out).all() and psnr(out, base) > 20
    sadakit.remove(t2v)
    assert torch.equal(run(t2v, steps=16), base)


def test_a_shared_expert_is_refused(t2v):
    other = diffusers.WanPipeline(tokenizer=t2v.tokenizer, text_encoder=t2v.text_encoder, vae=t2v.vae,
                                  scheduler=t2v.scheduler, transformer=tiny_wan_experts_pipeline().transformer,
                                  transformer_2=t2v.transformer_2, boundary_ratio=0.875)
    other.set_progress_bar_config(disable=True)
    sadakit.accelerate(t2v)
    try:
        with pytest.raises(RuntimeError, match=r"WanTransformer3DModel\) already carries a sadakit hook"):
            sadakit.accelerate(other)
        assert not sadakit.is_accelerated(other)
        assert not getattr(getattr(other.transformer, "_diffusers_hook", None), "hooks", None)
    finally:
        sadakit.remove(t2v)


def test_bad_expert_and_channel_declarations_are_refused():
    module, other = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="experts must be modules other than"):
        sadakit.DenoiserSpec(module=module, experts=(module,))
    with pytest.raises(ValueError, match="each named once"):
        sadakit.DenoiserSpec(module=module, experts=(other, other))
    with pytest.raises(TypeError, match=r"experts\[0\] must be a torch.nn.Module"):
        sadakit.DenoiserSpec(module=module, experts=("transformer_2",))
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="noisy_channels must be a positive int"):
            sadakit.DenoiserSpec(module=module, noisy_channels=bad)
    with pytest.raises(ValueError, match="channel_dim must be an int >= 1"):
        sadakit.DenoiserSpec(module=module, noisy_channels=4, channel_dim=0)
    spec = sadakit.DenoiserSpec(module=module, experts=[other], noisy_channels=3)
    assert spec.modules == (module, other)
    sample = torch.randn(2, 5, 4)
    assert torch.equal(spec.noisy_sample(sample), sample[:, :3])
    with pytest.raises(ValueError, match="has 2 channels along dimension 1, fewer than the 3 noisy channels"):
        spec.noisy_sample(torch.randn(2, 2, 4))


def test_both_experts_compile_fullgraph_with_the_eager_result(t2v):
    """Each expert has its own door: compiled in place (``fullgraph=True``), every network call
    of either is one graph, decisions and output as eager, no recompile in the next generation."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    sadakit.accelerate(t2v)
    eager = run(t2v, steps=12)
    decisions = sadakit.report(t2v).decisions
    assert "S" in decisions, decisions
    runs = []

    def backend(gm, example_inputs):
        def graph(*args):
            runs.append(1)
            return gm.forward(*args)
        return graph

    try:
        for name in ("transformer", "transformer_2"):
            getattr(t2v, name).compile(backend=backend, fullgraph=True)
        first = run(t2v, steps=12)
        report = sadakit.report(t2v)
        assert report.decisions == decisions and torch.equal(first, eager)
        assert len(runs) == report.network_calls  # one graph per network call, in both experts
        graphs = counters["stats"]["unique_graphs"]
        assert torch.equal(run(t2v, steps=12), eager) and counters["stats"]["unique_graphs"] == graphs
    finally:
        sadakit.remove(t2v)
        for name in ("transformer", "transformer_2"):
            getattr(t2v, name)._compiled_call_impl = None
        torch._dynamo.reset()
