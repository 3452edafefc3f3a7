"""The plugin contract from outside: a plugin package installed by entry point works through the
public API alone; a broken one is skipped with a warning; contract mistakes are named early."""

import sys
import textwrap
import warnings

import pytest
import torch

import sadakit
from sadakit import registry

THIRD_PARTY = '''
"""A third-party plugin: Stable Diffusion under its own family name, public API only."""
import sadakit


@sadakit.hookimpl
def sadakit_family(pipe):
    return "outside-sd" if type(pipe).__name__ == "StableDiffusionPipeline" else None


@sadakit.hookimpl
def sadakit_supported_pipelines():
    return ["StableDiffusionPipeline"]


@sadakit.hookimpl
def sadakit_denoiser(pipe):
    return sadakit.DenoiserSpec(module=pipe.unet, sample_arg="sample", timestep_arg="timestep")


@sadakit.hookimpl
def sadakit_parameterization(pipe):
    config = pipe.scheduler.config
    return sadakit.VPParameterization(pipe.scheduler.alphas_cumprod, prediction_type=config.prediction_type)


@sadakit.hookimpl
def sadakit_cfg_groups(pipe, batch_size):
    half = batch_size // 2  # diffusers batches [uncond, cond]
    return [[r, r + half] for r in range(half)] if pipe.do_classifier_free_guidance else None


@sadakit.hookimpl
def sadakit_token_blocks(pipe, denoiser):
    from diffusers.models.attention import BasicTransformerBlock

    return [sadakit.TokenBlockSpec(module=m, name=n, layout="halved")
            for n, m in denoiser.named_modules() if isinstance(m, BasicTransformerBlock)]
'''


def _dist_info(root, package: str, entry: str) -> None:
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[sadakit]\n{entry}\n")


@pytest.fixture
def installed_plugins(tmp_path, monkeypatch):
    """Two plugin packages on sys.path with `sadakit` entry points; a fresh plugin manager."""
    (tmp_path / "outside_sd_plugin.py").write_text(textwrap.dedent(THIRD_PARTY))
    _dist_info(tmp_path, "outside_sd_plugin", "outside-sd = outside_sd_plugin")
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('needs a library that is not installed')\n")
    _dist_info(tmp_path, "broken_plugin", "broken = broken_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_manager", None)
    yield
    for name in ("outside_sd_plugin", "broken_plugin"):
        sys.modules.pop(name, None)
    registry._manager = None


def test_entry_point_plugins_load_and_a_broken_one_is_skipped(installed_plugins, sd_vpred_pipe):
    pipe = sd_vpred_pipe
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = sadakit.supported_pipelines()
    skipped = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(skipped) == 1 and "'broken'" in skipped[0] and "needs a library that is not installed" in skipped[0]
    assert "StableDiffusionXLPipeline" in names and "WanPipeline" in names  # built-ins still there
    generator = torch.Generator().manual_seed(0)
    base = pipe(prompt="a red square", num_inference_steps=20, height=64, width=64, generator=generator,
                output_type="pt").images
    sadakit.accelerate(pipe)
    try:
        generator = torch.Generator().manual_seed(0)
        out = pipe(prompt="a red square", num_inference_steps=20, height=64, width=64, generator=generator,
                   output_type="pt").images
        rep = sadakit.report(pipe)
    finally:
        sadakit.remove(pipe)
    assert rep.family == "outside-sd" and rep.network_calls < 20 and torch.isfinite(out).all()
    generator = torch.Generator().manual_seed(0)
    again = pipe(prompt="a red square", num_inference_steps=20, height=64, width=64, generator=generator,
                 output_type="pt").images
    assert torch.equal(again, base)


def test_a_misspelled_hook_is_refused_at_registration():
    class Misspelled:
        @sadakit.hookimpl
        def sadakit_token_blockz(self, pipe, denoiser):
            return []

    with pytest.raises(sadakit.PluginContractError, match="sadakit_token_blockz.*misspelled.*sadakit_token_blocks"):
        sadakit.register_plugin(Misspelled(), name="misspelled")
    assert registry.plugin_manager().get_plugin("misspelled") is None


def test_a_hook_with_unknown_arguments_is_refused():
    class WrongArguments:
        @sadakit.hookimpl
        def sadakit_family(self, pipe, device):
            return None

    with pytest.raises(sadakit.PluginContractError, match="device"):
        sadakit.register_plugin(WrongArguments(), name="wrong-arguments")


@pytest.mark.parametrize("field,value", [("sample_arg", "latents"), ("timestep_arg", "t")])
def test_declared_denoiser_arguments_are_checked_at_accelerate(sdxl, field, value):
    class WrongName:
        @sadakit.hookimpl
        def sadakit_family(self, pipe):
            return "wrong-name"

        @sadakit.hookimpl
        def sadakit_denoiser(self, pipe):
            return sadakit.DenoiserSpec(module=pipe.unet, **{field: value})

    plugin = WrongName()
    sadakit.register_plugin(plugin, name="wrong-name")
    try:
        with pytest.raises(sadakit.PluginContractError,
                           match=rf"'wrong-name' declares DenoiserSpec.{field}='{value}'.*UNet2DConditionModel.forward"):
            sadakit.accelerate(sdxl)
    finally:
        sadakit.unregister_plugin(plugin)
    assert not sadakit.is_accelerated(sdxl)


def test_declared_block_arguments_are_checked(sdxl):
    from sadakit.plugins.unet_common import unet_parameterization

    class WrongTokenArg:
        @sadakit.hookimpl
        def sadakit_family(self, pipe):
            return "wrong-token-arg"

        @sadakit.hookimpl
        def sadakit_denoiser(self, pipe):
            return sadakit.DenoiserSpec(module=pipe.unet)

        @sadakit.hookimpl
        def sadakit_parameterization(self, pipe):
            return unet_parameterization(pipe)

        @sadakit.hookimpl
        def sadakit_token_blocks(self, pipe, denoiser):
            from diffusers.models.attention import BasicTransformerBlock

            name, block = next((n, m) for n, m in denoiser.named_modules() if isinstance(m, BasicTransformerBlock))
            return [sadakit.TokenBlockSpec(module=block, name=name, token_args={"rotary": sadakit.TokenArg(dim=1)})]

    plugin = WrongTokenArg()
    sadakit.register_plugin(plugin, name="wrong-token-arg")
    try:
        with pytest.raises(sadakit.PluginContractError, match=r"token_args\['rotary'\]='rotary'.*BasicTransformerBlock"):
            sadakit.accelerate(sdxl)
    finally:
        sadakit.unregister_plugin(plugin)


def test_token_block_spec_rejects_unknown_layouts():
    with pytest.raises(ValueError, match="layout must be one of"):
        sadakit.TokenBlockSpec(module=torch.nn.Identity(), name="b", layout="grid")
    with pytest.raises(TypeError, match="sadakit.TokenArg"):
        sadakit.TokenBlockSpec(module=torch.nn.Identity(), name="b", token_args={"rotary": 1})
