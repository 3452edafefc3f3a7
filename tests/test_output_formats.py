"""A plugin adds its own kind of output (an :class:`sadakit.OutputFormat`) and gets the command
line and the prompt-set runner for it: here, latents saved as ``.npy`` files by a third-party
plugin that claims the SD pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

import sadakit
from sadakit import cli
from sadakit.errors import PluginContractError
from sadakit.registry import output_format_of, output_formats
from sadakit.testing import tiny_sd_pipeline


def _write_latent(pipe, sample, path, options):
    np.save(path, np.asarray(sample, dtype=np.float32))
    return path, None


LATENT = sadakit.OutputFormat("latent", (".npy",), "images", _write_latent, per_prompt_arg="num_images_per_prompt",
                              output_type="latent", noun="latents")


class LatentPlugin:
    """Claims StableDiffusionPipeline and says it makes latents (asked before the built-in plugin)."""

    @sadakit.hookimpl
    def sadakit_family(self, pipe):
        return "sd-latents" if isinstance(pipe, StableDiffusionPipeline) else None

    @sadakit.hookimpl
    def sadakit_output_kind(self, pipe):
        return "latent"

    @sadakit.hookimpl
    def sadakit_output_formats(self):
        return [LATENT]

    @sadakit.hookimpl
    def sadakit_denoiser(self, pipe):
        return sadakit.DenoiserSpec(module=pipe.unet)


@pytest.fixture
def latent_plugin():
    plugin = LatentPlugin()
    sadakit.register_plugin(plugin, name="latent-writer")
    yield plugin
    sadakit.unregister_plugin(plugin)


def test_generate_writes_the_plugins_kind(tmp_path, capsys, latent_plugin):
    out = tmp_path / "latent.npy"
    argv = ["generate", "--pipeline", "tiny:sd", "--prompt", "a red square", "--steps", "3", "--seed", "4",
            "--no-accelerate", "--out", str(out)]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["output"] == str(out)
    saved = np.load(out)
    pipe = tiny_sd_pipeline()
    expected = pipe("a red square", num_inference_steps=3, generator=torch.Generator().manual_seed(4),
                    output_type="latent", **_sizes()).images[0]
    assert saved.shape == tuple(expected.shape) and np.array_equal(saved, expected.numpy())


def _sizes():
    from sadakit.loading import default_call_kwargs

    return default_call_kwargs("tiny:sd")


def test_the_plugins_extension_is_enforced(tmp_path, latent_plugin):
    with pytest.raises(SystemExit, match=r"makes latents; --out must end in \.npy"):
        cli.main(["generate", "--pipeline", "tiny:sd", "--prompt", "a", "--steps", "2", "--no-accelerate",
                  "--out", str(tmp_path / "a.png")])


def test_an_extension_no_kind_has_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sadakit.loading.load_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(SystemExit):
        cli.main(["generate", "--pipeline", "tiny:sd", "--prompt", "a", "--out", str(tmp_path / "a.npy")])
    assert "has no output extension; use one of .png" in capsys.readouterr().err


def test_prompt_sets_write_the_plugins_kind(tmp_path, latent_plugin):
    pipe = tiny_sd_pipeline()
    summary = sadakit.generate_many(pipe, ["a red square", "a blue circle"], tmp_path, steps=2,
                                    call_kwargs=_sizes(), progress=False)
    assert summary.generated == 2 and summary.failed == 0
    records = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert [r["output"] for r in records] == ["000000.npy", "000001.npy"]
    for record in records:
        latent = np.load(tmp_path / record["output"])
        assert latent.shape == (4, 8, 8) and np.isfinite(latent).all()
    again = sadakit.generate_many(pipe, ["a red square", "a blue circle"], tmp_path, steps=2,
                                  call_kwargs=_sizes(), progress=False)
    assert again.done_before == 2 and again.generated == 0  # finished rows are found by their .npy files


def test_bad_formats_are_refused_clearly():
    for kind in ("Mesh", "3d", "", "a b"):
        with pytest.raises(ValueError, match="kind must be a lower-case name"):
            sadakit.OutputFormat(kind, (".ply",), "meshes", _write_latent)
    for suffixes in ((), ("ply",), (".PLY",)):
        with pytest.raises(ValueError, match="suffixes must be lower-case extensions"):
            sadakit.OutputFormat("mesh", suffixes, "meshes", _write_latent)
    with pytest.raises(TypeError, match="write must be callable"):
        sadakit.OutputFormat("mesh", (".ply",), "meshes", "np.save")


def test_a_kind_defined_twice_or_unknown_is_refused(latent_plugin):
    class Clash:
        @sadakit.hookimpl
        def sadakit_output_formats(self):
            return [sadakit.OutputFormat("image", (".tiff",), "images", _write_latent)]

    clash = Clash()
    sadakit.register_plugin(clash, name="clash")
    try:
        with pytest.raises(PluginContractError, match="'clash' adds output kind 'image', which 'sadakit' already"):
            output_formats()
    finally:
        sadakit.unregister_plugin(clash)
    assert output_formats()["latent"] is LATENT and output_format_of(tiny_sd_pipeline()) is LATENT

    class Unknown:
        @sadakit.hookimpl
        def sadakit_family(self, pipe):
            return "sd-meshes"

        @sadakit.hookimpl
        def sadakit_output_kind(self, pipe):
            return "mesh"  # no plugin adds this kind

    unknown = Unknown()
    sadakit.register_plugin(unknown, name="unknown-kind")
    try:
        with pytest.raises(PluginContractError, match=r"makes 'mesh'; allowed: image, video, audio, latent"):
            output_format_of(tiny_sd_pipeline())
    finally:
        sadakit.unregister_plugin(unknown)
