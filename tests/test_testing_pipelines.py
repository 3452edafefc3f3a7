"""The offline tiny pipelines build, generate, round-trip and are deterministic."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from diffusers import DiffusionPipeline, FluxMultiControlNetModel, MultiControlNetModel
from PIL import Image

from sadakit.plugins.audio.compat import (
    ensure_musicldm_compat,
    is_musicldm_compat_applied,
    undo_musicldm_compat,
)
from sadakit.testing import (
    clip_tokenizer,
    roberta_tokenizer,
    t5_tokenizer,
    tiny_flux_controlnet_pipeline,
    tiny_flux_pipeline,
    tiny_musicldm_pipeline,
    tiny_sd_controlnet_pipeline,
    tiny_sd_pipeline,
    tiny_sdxl_controlnet_pipeline,
    tiny_sdxl_pipeline,
)

PROMPTS = ["a red cat", "a blue dog"]
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
BUILDERS = [
    tiny_sd_pipeline,
    tiny_sdxl_pipeline,
    tiny_flux_pipeline,
    tiny_sd_controlnet_pipeline,
    tiny_sdxl_controlnet_pipeline,
    tiny_flux_controlnet_pipeline,
    tiny_musicldm_pipeline,
]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models are overhead-bound: a second thread gains ~10%, but when other
    processes load the CPU, OpenMP spin-waiting makes 2-thread runs 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _control(height: int, width: int, square: bool = True) -> Image.Image:
    """A sparse, edge-map-like control image (a lit square on black) or a blank one."""
    array = np.zeros((height, width, 3), np.uint8)
    if square:
        array[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
    return Image.fromarray(array)


def _image_call(pipe, height: int = 64, width: int = 64, **kwargs) -> np.ndarray:
    """2 steps, batch 2, CFG on, in each family's own way of asking for it."""
    kwargs = {"num_inference_steps": 2, "height": height, "width": width, "generator": _gen(), **kwargs}
    kwargs.setdefault("output_type", "np")
    if "flux" in type(pipe).__name__.lower():
        kwargs.update(negative_prompt=["", ""], true_cfg_scale=2.0, max_sequence_length=32)
    else:
        kwargs.update(guidance_scale=5.0)
    return pipe(PROMPTS, **kwargs).images


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float((a - b).norm() / b.norm())


def _state_dicts_equal(p1, p2) -> bool:
    for name, module in p1.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        other = p2.components[name].state_dict()
        for key, value in module.state_dict().items():
            if not torch.equal(value, other[key]):
                return False
    return True


# ------------------------------------------------------------------ build and generate


@pytest.mark.parametrize(
    "builder, options, height, width",
    [
        (tiny_sd_pipeline, {}, 64, 64),
        (tiny_sd_pipeline, {"prediction_type": "v_prediction"}, 64, 64),
        (tiny_sdxl_pipeline, {}, 64, 96),
        (tiny_flux_pipeline, {}, 64, 96),
        (tiny_flux_pipeline, {"guidance_embeds": False}, 64, 64),
    ],
)
def test_image_pipelines_generate(builder, options, height, width):
    images = _image_call(builder(**options), height=height, width=width)
    assert images.shape == (2, height, width, 3)
    assert np.isfinite(images).all()


@pytest.mark.parametrize(
    "builder, count, multi_cls",
    [
        (tiny_sd_controlnet_pipeline, 1, None),
        (tiny_sd_controlnet_pipeline, 2, MultiControlNetModel),
        (tiny_sdxl_controlnet_pipeline, 1, None),
        (tiny_sdxl_controlnet_pipeline, 2, MultiControlNetModel),
        (tiny_flux_controlnet_pipeline, 1, None),
        (tiny_flux_controlnet_pipeline, 2, FluxMultiControlNetModel),
    ],
)
def test_controlnet_pipelines_generate(builder, count, multi_cls):
    pipe = builder(num_controlnets=count)
    if multi_cls is not None:
        assert isinstance(pipe.controlnet, multi_cls)
    control = _control(64, 96) if count == 1 else [_control(64, 96), _control(64, 96, square=False)]
    key = "control_image" if "Flux" in type(pipe).__name__ else "image"
    extra = {"controlnet_conditioning_scale": [1.0, 0.5]} if count > 1 else {}  # Flux multi needs a list
    images = _image_call(pipe, height=64, width=96, **{key: control}, **extra)
    assert images.shape == (2, 64, 96, 3)
    assert np.isfinite(images).all()


def _unet_inputs(pipe) -> tuple[torch.Tensor, dict]:
    """A batch-2 latent (non-square for images) and the conditioning each UNet family takes."""
    config = pipe.unet.config
    if "MusicLDM" in type(pipe).__name__:
        class_labels = torch.randn(2, config.projection_class_embeddings_input_dim)
        return torch.randn(2, 8, 16, 16), {"encoder_hidden_states": None, "class_labels": class_labels}
    kwargs = {"encoder_hidden_states": torch.randn(2, 7, config.cross_attention_dim)}
    if config.addition_embed_type == "text_time":
        pooled = torch.randn(2, pipe.text_encoder_2.config.projection_dim)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": torch.zeros(2, 6)}
    return torch.randn(2, 4, 8, 12), kwargs


@pytest.mark.parametrize("builder", [tiny_sd_pipeline, tiny_sdxl_pipeline, tiny_musicldm_pipeline])
def test_tiny_unets_attend_at_two_resolutions(builder):
    """Token-wise sparsity needs attention blocks at several grid sizes."""
    pipe = builder()
    grids: set[tuple[int, int]] = set()
    hooks = [
        module.register_forward_hook(lambda m, args, out: grids.add(tuple(out[0].shape[-2:])))
        for module in pipe.unet.modules()
        if type(module).__name__ == "Transformer2DModel"
    ]
    sample, kwargs = _unet_inputs(pipe)
    with torch.no_grad():
        pipe.unet(sample, 10, **kwargs)
    for hook in hooks:
        hook.remove()
    assert len(grids) >= 2, grids


# ----------------------------------------------------------------------- determinism


@pytest.mark.parametrize("builder", BUILDERS)
def test_same_seed_same_weights(builder):
    a, b, c = builder(seed=3), builder(seed=3), builder(seed=4)
    assert _state_dicts_equal(a, b)
    assert not _state_dicts_equal(a, c)
    for component in a.components.values():
        if isinstance(component, torch.nn.Module):
            assert not component.training
    assert a._progress_bar_config.get("disable") is True


def test_same_seed_same_output():
    assert np.array_equal(_image_call(tiny_sdxl_pipeline(seed=1)), _image_call(tiny_sdxl_pipeline(seed=1)))
    flux = [_image_call(tiny_flux_pipeline(seed=1), output_type="latent") for _ in range(2)]
    assert torch.equal(flux[0], flux[1])


def test_builders_leave_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    tiny_sd_pipeline(seed=7)
    assert torch.equal(torch.rand(4), expected)


def test_unknown_size_is_rejected():
    with pytest.raises(ValueError, match="size"):
        tiny_sd_pipeline(size="huge")


# ------------------------------------------------------------------------ controlnet


@pytest.mark.parametrize("builder", [tiny_sd_controlnet_pipeline, tiny_sdxl_controlnet_pipeline, tiny_flux_controlnet_pipeline])
def test_control_image_changes_output(builder):
    """A random ControlNet is a no-op unless its zero convolutions are re-initialised."""
    pipe = builder()
    key = "control_image" if "Flux" in type(pipe).__name__ else "image"

    def latents(square: bool, scale: float = 1.0) -> torch.Tensor:
        return _image_call(pipe, output_type="latent", controlnet_conditioning_scale=scale, **{key: _control(64, 64, square)})

    with_square, blank, off = latents(True), latents(False), latents(True, scale=0.0)
    assert _rel(with_square, blank) > 0.05  # the content of the control image matters
    assert _rel(with_square, off) > 0.05  # and the branch itself does


# ---------------------------------------------------------------------- save / load


def test_sdxl_round_trip_offline(tmp_path):
    pipe = tiny_sdxl_pipeline()
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path, local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipe)
    assert _state_dicts_equal(pipe, loaded)
    assert np.array_equal(_image_call(pipe, height=64, width=96), _image_call(loaded, height=64, width=96))


def test_musicldm_round_trip_offline(tmp_path):
    pipe = tiny_musicldm_pipeline()
    ensure_musicldm_compat(pipe)  # the patch lives on the instance: saving must ignore it
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path, local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipe)
    assert _state_dicts_equal(pipe, loaded)
    assert not is_musicldm_compat_applied(loaded)
    ensure_musicldm_compat(loaded)
    call = dict(num_inference_steps=2, audio_length_in_s=0.64)
    assert np.array_equal(pipe(PROMPTS, generator=_gen(), **call).audios, loaded(PROMPTS, generator=_gen(), **call).audios)


@pytest.mark.parametrize("make", [clip_tokenizer, roberta_tokenizer, t5_tokenizer])
def test_tokenizers_round_trip_offline(make, tmp_path):
    tokenizer = make()
    tokenizer.save_pretrained(tmp_path)
    loaded = type(tokenizer).from_pretrained(tmp_path, local_files_only=True)
    text = ["a cat, 42 dogs!", ""]
    assert loaded(text, padding="max_length", max_length=24).input_ids == tokenizer(text, padding="max_length", max_length=24).input_ids


# ------------------------------------------------------------------ MusicLDM + compat


@pytest.fixture
def musicldm():
    return tiny_musicldm_pipeline()


@pytest.mark.skipif(not TRANSFORMERS_5, reason="the incompatibility exists from transformers 5 on")
def test_musicldm_fails_without_compat(musicldm):
    with pytest.raises(AttributeError, match="BaseModelOutputWithPooling"):
        musicldm(PROMPTS, num_inference_steps=2, audio_length_in_s=0.64)


@pytest.mark.skipif(not TRANSFORMERS_5, reason="the fix is only needed from transformers 5 on")
def test_compat_returns_clap_projection_embeddings(musicldm):
    encoder = musicldm.text_encoder
    inputs = musicldm.tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt")
    assert ensure_musicldm_compat(musicldm) is True
    with torch.no_grad():
        features = encoder.get_text_features(inputs.input_ids, attention_mask=inputs.attention_mask)
        pooled = encoder.text_model(inputs.input_ids, attention_mask=inputs.attention_mask).pooler_output
        expected = F.normalize(encoder.text_projection(pooled), dim=-1)
    assert isinstance(features, torch.Tensor)
    assert features.shape == (2, encoder.config.projection_dim)
    torch.testing.assert_close(features, expected)


@pytest.mark.skipif(not TRANSFORMERS_5, reason="the fix is only needed from transformers 5 on")
def test_compat_end_to_end_idempotent_and_undone(musicldm):
    encoder = musicldm.text_encoder
    original = encoder.get_text_features
    assert ensure_musicldm_compat(musicldm) is True
    assert ensure_musicldm_compat(musicldm) is False  # already applied
    audios = musicldm(PROMPTS, num_inference_steps=2, audio_length_in_s=0.64, generator=_gen()).audios
    assert audios.shape == (2, int(0.64 * 16000))
    assert np.isfinite(audios).all() and audios.std() > 1e-3  # audible level, not near-silence
    latents = musicldm(PROMPTS, num_inference_steps=2, audio_length_in_s=0.64, output_type="latent").audios
    assert latents.shape == (2, 8, int(0.64 * 100 / 4), 16)

    assert undo_musicldm_compat(musicldm) is True
    assert undo_musicldm_compat(musicldm) is False
    assert "get_text_features" not in encoder.__dict__
    assert encoder.get_text_features == original
    with pytest.raises(AttributeError):
        musicldm(PROMPTS, num_inference_steps=2, audio_length_in_s=0.64)


@pytest.mark.skipif(not TRANSFORMERS_5, reason="the fix is only needed from transformers 5 on")
def test_compat_keeps_an_earlier_instance_patch(musicldm):
    encoder = musicldm.text_encoder
    calls = []

    def earlier(*args, **kwargs):
        calls.append(1)
        return type(encoder).get_text_features(encoder, *args, **kwargs)

    encoder.get_text_features = earlier
    assert ensure_musicldm_compat(musicldm) is True
    musicldm(PROMPTS, num_inference_steps=1, audio_length_in_s=0.64, output_type="latent")
    assert calls  # the earlier patch still runs underneath
    assert undo_musicldm_compat(musicldm) is True
    assert encoder.__dict__["get_text_features"] is earlier


def test_compat_ignores_other_pipelines():
    pipe = tiny_sd_pipeline()
    assert ensure_musicldm_compat(pipe) is False
    assert undo_musicldm_compat(pipe) is False


# ----------------------------------------------------------------------- medium sizes
