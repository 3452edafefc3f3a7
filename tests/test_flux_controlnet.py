"""SADA on Flux and ControlNet pipelines (tiny, random weights): exactness, counting, tokens, errors.

Counts come from forward pre-hooks on the first layer of each network (real forwards), never
from sadakit's own report alone.
"""

import diffusers
import pytest
import torch

import sadakit
from sadakit.errors import UnsupportedPipelineError
from sadakit.registry import plugin_manager
from sadakit.testing import (
    tiny_flux_controlnet_pipeline,
    tiny_flux_pipeline,
    tiny_sd_controlnet_pipeline,
    tiny_sdxl_controlnet_pipeline,
)
from sadakit.testing.pipelines import control_probe

PROMPTS = ["a red square on the left", "a blue circle at the top"]


class Counter:
    """Forward pre-hook on a module: how many real forwards, how many rows, which shapes."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        self.rows = 0
        self.shapes: list[tuple] = []
        self._handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()))
        self.count += 1
        self.rows += x.shape[0]
        self.shapes.append(tuple(x.shape))

    def close(self) -> None:
        self._handle.remove()


class BlockTokens:
    """Image and text token counts every Flux block computes.

    Watched inside the blocks (a pre-hook on the block itself would see the full input before
    sadakit's hook prunes it): double-stream blocks normalise image and text separately
    (``norm1`` / ``norm1_context``); single-stream blocks normalise [text, image] together.
    """

    def __init__(self, transformer, text_len: int) -> None:
        self.text_len = text_len
        self.image: list[int] = []
        self.text: list[int] = []
        self._handles = []
        for block in transformer.transformer_blocks:
            self._handles.append(block.norm1.register_forward_pre_hook(self._image))
            self._handles.append(block.norm1_context.register_forward_pre_hook(self._text))
        for block in transformer.single_transformer_blocks:
            self._handles.append(block.norm.register_forward_pre_hook(self._joint))

    def _image(self, module, args):
        self.image.append(args[0].shape[1])

    def _text(self, module, args):
        self.text.append(args[0].shape[1])

    def _joint(self, module, args):
        self.image.append(args[0].shape[1] - self.text_len)

    def close(self) -> None:
        for h in self._handles:
            h.remove()


# ------------------------------------------------------------------------------ fixtures


def _plain(pipe):
    sadakit.remove(pipe)
    scheduler = pipe.scheduler
    yield pipe
    sadakit.remove(pipe)
    pipe.scheduler = scheduler


@pytest.fixture(scope="module")
def flux_pipe():
    return tiny_flux_pipeline()


@pytest.fixture(scope="module")
def sd_cn_pipe():
    return tiny_sd_controlnet_pipeline()


@pytest.fixture(scope="module")
def sdxl_multi_cn_pipe():
    return tiny_sdxl_controlnet_pipeline(num_controlnets=2)


@pytest.fixture(scope="module")
def flux_cn_pipe():
    return tiny_flux_controlnet_pipeline()


@pytest.fixture
def flux(flux_pipe):
    yield from _plain(flux_pipe)


@pytest.fixture
def sd_cn(sd_cn_pipe):
    yield from _plain(sd_cn_pipe)


@pytest.fixture
def sdxl_cn(sdxl_multi_cn_pipe):
    yield from _plain(sdxl_multi_cn_pipe)


@pytest.fixture
def flux_cn(flux_cn_pipe):
    yield from _plain(flux_cn_pipe)


def run(pipe, steps=20, height=64, width=96, prompts=PROMPTS, seed=0, **kw):
    """One generation; control images sized to the output, Flux with a short T5 text."""
    name = type(pipe).__name__
    if "Flux" in name:
        kw.setdefault("max_sequence_length", 16)
    if "ControlNet" in name:
        n = len(getattr(pipe.controlnet, "nets", [pipe.controlnet]))
        image = control_probe(3, height, width)
        images = image if n == 1 else [image] * n
        if n > 1:
            kw.setdefault("controlnet_conditioning_scale", [1.0, 0.6])
        kw["control_image" if "Flux" in name else "image"] = images
    return pipe(
        prompt=prompts, num_inference_steps=steps, height=height, width=width, output_type="pt",
        generator=torch.Generator().manual_seed(seed), **kw,
    ).images


def first_layers(pipe):
    """(denoiser's first layer, [each ControlNet's first layer])."""
    if hasattr(pipe, "transformer"):
        den = pipe.transformer.x_embedder
    else:
        den = pipe.unet.conv_in
    nets = getattr(pipe, "controlnet", None)
    nets = [] if nets is None else list(getattr(nets, "nets", [nets]))
    return den, [n.x_embedder if hasattr(n, "x_embedder") else n.conv_in for n in nets]


def assert_clean(pipe):
    for name in ("transformer", "unet", "controlnet"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        for m in module.modules():
            assert "forward" not in m.__dict__
            assert not getattr(m, "_diffusers_hook", None) or not m._diffusers_hook.hooks
        assert not module._forward_pre_hooks


def _stochastic(pipe):
    # random-weight flow trajectories are smooth enough that the deterministic criterion marks
    # every token unstable; the stochastic sampler's noise gives stable tokens to prune
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        pipe.scheduler.config, stochastic_sampling=True
    )


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("which", ["flux", "sd_cn", "sdxl_cn", "flux_cn"])
def test_disabled_and_removed_are_bit_identical(request, which):
    pipe = request.getfixturevalue(which)
    base = run(pipe, steps=8)
    sadakit.accelerate(pipe, sadakit.SADAConfig.disabled())
    assert torch.equal(run(pipe, steps=8), base)
    rep = sadakit.report(pipe)
    assert rep.decisions == "F" * 8 and rep.family.endswith(("flux", "controlnet"))
    sadakit.accelerate(pipe)
    assert torch.isfinite(run(pipe, steps=8)).all()
    assert sadakit.remove(pipe)
    assert torch.equal(run(pipe, steps=8), base)
    assert_clean(pipe)


# ----------------------------------------------------------------- control branch counts


@pytest.mark.parametrize("which,guess_mode", [("sd_cn", False), ("sd_cn", True), ("sdxl_cn", False), ("flux_cn", False)])
def test_control_branch_runs_exactly_when_the_denoiser_does(request, which, guess_mode):
    pipe = request.getfixturevalue(which)
    kw = {"guess_mode": True, "guidance_scale": 5.0} if guess_mode else {}
    sadakit.accelerate(pipe, sadakit.SADAConfig(token_sparsity=False))
    den_layer, control_layers = first_layers(pipe)
    den = Counter(den_layer)
    controls = [Counter(layer) for layer in control_layers]
    try:
        out = run(pipe, steps=12, **kw)
    finally:
        den.close()
        for c in controls:
            c.close()
    rep = sadakit.report(pipe)
    assert torch.isfinite(out).all()
    assert rep.denoiser_calls == 12 and rep.skipped_calls >= 1, rep.decisions
    assert den.count == rep.network_calls < 12
    for c in controls:
        assert c.count == den.count, (c.count, den.count, rep.decisions)
        # guess mode: the ControlNet sees only the conditional half of every computed row pair
        assert c.rows * (2 if guess_mode else 1) == den.rows
    assert rep.control_calls_run == den.count


def test_control_on_computed_rows_only_in_mixed_calls(flux_cn):
    """Per-sample decisions on Flux (rows are independent: guidance is an embedding): on a mixed
    call the transformer and the ControlNet run on the computed rows only."""
    _stochastic(flux_cn)
    sadakit.accelerate(flux_cn, sadakit.SADAConfig.criterion_only(token_sparsity=False))
    den_layer, control_layers = first_layers(flux_cn)
    den, controls = Counter(den_layer), [Counter(layer) for layer in control_layers]
    try:
        for seed in range(4):
            run(flux_cn, steps=12, seed=seed)
            if "M" in sadakit.report(flux_cn).decisions:
                break
    finally:
        den.close()
        for c in controls:
            c.close()
    rep = sadakit.report(flux_cn)
    assert "M" in rep.decisions, rep.decisions
    assert 1 in [shape[0] for shape in den.shapes]  # one of the two prompts alone
    for c in controls:
        assert c.shapes == den.shapes


def test_control_strength_and_guidance_window_still_act(sd_cn):
    """controlnet_conditioning_scale and control_guidance_start/end pass through unchanged."""
    sadakit.accelerate(sd_cn)
    full = run(sd_cn, steps=12)
    none = run(sd_cn, steps=12, controlnet_conditioning_scale=0.0)
    window = run(sd_cn, steps=12, control_guidance_start=0.0, control_guidance_end=0.5)
    assert not torch.equal(full, none) and not torch.equal(full, window) and not torch.equal(none, window)
    rep = sadakit.report(sd_cn)
    assert rep.control_calls_run == rep.network_calls


# ------------------------------------------------------------------------- Flux tokens


@pytest.mark.parametrize("height,width,prompts", [(128, 128, PROMPTS[:1]), (64, 128, PROMPTS)])
def test_flux_partial_calls_prune_image_tokens_only(flux, height, width, prompts):
    _stochastic(flux)
    sadakit.accelerate(flux, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0))
    seen = BlockTokens(flux.transformer, text_len=16)
    try:
        out = run(flux, steps=12, height=height, width=width, prompts=prompts)
    finally:
        seen.close()
    rep = sadakit.report(flux)
    full = (height // 16) * (width // 16)
    b = len(prompts)
    assert out.shape == (b, 3, height, width) and torch.isfinite(out).all()
    assert rep.partial_calls >= 1, rep.decisions
    assert rep.tokens_total == 12 * 4 * full * b
    assert max(seen.image) == full and min(seen.image) < full
    assert sum(seen.image) * b == rep.tokens_computed < rep.tokens_total  # what ran is what is reported
    assert set(seen.text) == {16}  # text tokens always complete


@pytest.mark.parametrize("height,width", [(64, 64), (64, 96)])
def test_flux_default_config_skips_and_stays_finite(flux, height, width):
    sadakit.accelerate(flux)
    counter = Counter(flux.transformer.x_embedder)
    try:
        out = run(flux, steps=12, height=height, width=width)
    finally:
        counter.close()
    rep = sadakit.report(flux)
    assert out.shape == (2, 3, height, width) and torch.isfinite(out).all()
    assert rep.parameterization == "FlowParameterization(flow)"
    assert counter.count == rep.network_calls < 12, rep.decisions


# --------------------------------------------------------------------------- bad input


def test_controlnet_pipeline_without_controlnet_plugin_is_refused_clearly(sdxl_cn):
    pm = plugin_manager()
    name = "sadakit.plugins.controlnet.plugin"
    plugin = pm.get_plugin(name)
    pm.unregister(name=name)
    try:
        with pytest.raises(UnsupportedPipelineError, match="StableDiffusionXLControlNetPipeline has a ControlNet"):
            sadakit.accelerate(sdxl_cn)
    finally:
        pm.register(plugin, name=name)
    assert not sadakit.is_accelerated(sdxl_cn)
    assert_clean(sdxl_cn)
    assert sadakit.accelerate(sdxl_cn) is sdxl_cn  # the ControlNet plugin serves it


def test_direct_calls_outside_a_generation_run_plain(sd_cn):
    """Outside a pipeline call the hooks step aside: the modules behave exactly as unaccelerated
    (a user's own call, a from_pipe sibling), errors included."""
    sample, text = torch.randn(1, 4, 8, 12), torch.randn(1, 77, 32)
    cond = torch.rand(1, 3, 64, 96)

    def call(controlnet_cond):
        down, mid = sd_cn.controlnet(sample, torch.tensor([500]), encoder_hidden_states=text,
                                     controlnet_cond=controlnet_cond, return_dict=False)
        return sd_cn.unet(sample, torch.tensor([500]), encoder_hidden_states=text,
                          down_block_additional_residuals=down, mid_block_additional_residual=mid).sample

    plain = call(cond)
    with pytest.raises(RuntimeError) as plain_error:
        call(torch.rand(1, 3, 64, 64))
    sadakit.accelerate(sd_cn)
    assert torch.equal(call(cond), plain)
    with pytest.raises(RuntimeError) as accelerated_error:
        call(torch.rand(1, 3, 64, 64))
    assert str(accelerated_error.value) == str(plain_error.value)
    assert torch.isfinite(run(sd_cn, steps=8)).all() and sadakit.report(sd_cn).denoiser_calls == 8


def test_flux_true_cfg_is_accelerated_per_call_stream(flux):
    """true_cfg_scale > 1: two transformer calls per step ("cond", "uncond"), both counted,
    decided together, each extrapolated from its own history; bit-identical after remove."""
    kw = dict(steps=20, negative_prompt=["blurry", "dark"], true_cfg_scale=2.5)
    base = run(flux, **kw)
    counter = Counter(flux.transformer.x_embedder)
    try:
        sadakit.accelerate(flux)
        out = run(flux, **kw)
        rep = sadakit.report(flux)
    finally:
        counter.close()
    assert rep.streams == ["cond", "uncond"]
    assert rep.denoiser_calls == 40 and rep.batch_size == 4
    assert rep.network_calls == counter.count < 40, rep.decisions
    pairs = [rep.decisions[i:i + 2] for i in range(0, 40, 2)]
    assert all(p[0] == p[1] or "M" in p for p in pairs), pairs  # branches of a step decide together
    assert rep.per_sample_skipped[:2] == rep.per_sample_skipped[2:] and max(rep.per_sample_skipped) > 0
    assert torch.isfinite(out).all()
    mse = torch.mean((out - base) ** 2).item()
    psnr = 10 * torch.log10((base.max() - base.min()) ** 2 / max(mse, 1e-20)).item()
    assert psnr > 25, psnr
    sadakit.remove(flux)
    assert torch.equal(run(flux, **kw), base)


def test_flux_img2img_true_cfg_streams_without_cache_context():
    """FluxImg2ImgPipeline calls the transformer twice on one latent without cache contexts:
    the plugin's call_stream names the calls by their order."""
    from sadakit.spec import StreamsByRepeatedSample

    naming = StreamsByRepeatedSample("hidden_states")
    a, b = torch.zeros(1), torch.zeros(1)
    assert [naming({"hidden_states": t}) for t in (a, a, b, b, b, a)] == ["call0", "call1", "call0", "call1",
                                                                         "call2", "call0"]


def test_flux_wrong_scheduler_is_refused(flux):
    flux.scheduler = diffusers.EulerDiscreteScheduler()
    with pytest.raises(UnsupportedPipelineError, match="EulerDiscreteScheduler is not a flow-matching scheduler"):
        sadakit.accelerate(flux)
    assert not sadakit.is_accelerated(flux)


def test_flux_controlnet_true_cfg_is_refused(flux_cn):
    sadakit.accelerate(flux_cn)
    with pytest.raises(UnsupportedPipelineError, match="true_cfg_scale"):
        run(flux_cn, steps=6, negative_prompt=["blurry"] * 2, true_cfg_scale=2.0)
    assert torch.isfinite(run(flux_cn, steps=6)).all()  # the next generation starts clean
