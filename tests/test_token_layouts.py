"""The token-layout contract beyond a plain (B, N, C) block: token arguments with other entries
on either side, several token axes or only some tuple elements per token, and hidden states
holding other tokens (``OtherTokens``). Bad declarations fail at ``accelerate`` naming the block
and the argument; the runtime's cuts are checked against explicit indexing on random tensors.
"""

import dataclasses

import pytest
import torch
from diffusers.models.transformers.stable_audio_transformer import StableAudioDiTBlock

import sadakit
from sadakit.plugins.audio.stable_audio import STABLE_AUDIO
from sadakit.plugins.dit import BlockTokens, DiTPlugin
from sadakit.runtime.hooks import _take_argument
from sadakit.runtime.token_cache import _with_others
from sadakit.testing.dit_pipelines_2 import tiny_stable_audio_pipeline
from sadakit import OtherTokens, TokenArg, TokenBlockSpec


def spec(**kw):
    return TokenBlockSpec(module=torch.nn.Identity(), name="blocks.3", layout=kw.pop("layout", "exact"), **kw)


@pytest.mark.parametrize("how, message", [
    (TokenArg(dim=-1), r"token_args\['mask'\]: dim must be a non-negative int"),
    (TokenArg(dim=(2, 2)), r"token_args\['mask'\]: dim names an axis twice"),
    (TokenArg(dim=()), r"token_args\['mask'\]: dim must be"),
    (TokenArg(others="after"), r"token_args\['mask'\]: others must be one of \('leading', 'trailing'\)"),
    (TokenArg(elements=[0]), r"token_args\['mask'\]: elements must be None or a non-empty tuple"),
    (TokenArg(elements=()), r"token_args\['mask'\]: elements must be"),
])
def test_bad_token_arguments_are_named_with_their_block(how, message):
    with pytest.raises(ValueError, match=r"TokenBlockSpec 'blocks.3': " + message):
        spec(token_args={"mask": how})


@pytest.mark.parametrize("kw, message", [
    (dict(other_tokens=OtherTokens("middle")), r"other_tokens.where must be one of"),
    (dict(other_tokens=OtherTokens(count=-1)), r"other_tokens.count must be None or a non-negative int"),
    (dict(other_tokens=OtherTokens(), layout="halved"), r"other_tokens.count=None .* needs layout='exact'"),
    (dict(token_args={"hidden_states": TokenArg()}), r"token_args\['hidden_states'\] is the hidden-states"),
])
def test_bad_other_tokens_are_refused(kw, message):
    with pytest.raises(ValueError, match=r"TokenBlockSpec 'blocks.3': " + message):
        spec(**kw)
    with pytest.raises(TypeError, match="sadakit.OtherTokens"):
        spec(other_tokens="leading")


def test_todays_declarations_are_unchanged():
    how = TokenArg(dim=0)
    assert how.dims == (0,) and how.others == "leading" and how.elements is None
    assert spec(token_args={"rotary": TokenArg(dim=1)}).other_tokens is None


@pytest.fixture(scope="module")
def audio():
    return tiny_stable_audio_pipeline()


def declaring(**block):
    family = dataclasses.replace(STABLE_AUDIO, family="stable-audio-test",
                                 blocks=(BlockTokens(StableAudioDiTBlock, **block),))
    return DiTPlugin([family])


def test_a_bad_declaration_fails_at_accelerate_before_any_change(audio):
    plugin = declaring(other_tokens=OtherTokens("leading", count=-1))
    sadakit.register_plugin(plugin, name="bad-other-tokens")
    try:
        with pytest.raises(ValueError, match=r"TokenBlockSpec 'transformer_blocks.0': other_tokens.count"):
            sadakit.accelerate(audio)
    finally:
        sadakit.unregister_plugin(plugin)
    assert not sadakit.is_accelerated(audio)
    hooks = getattr(audio.transformer, "_diffusers_hook", None)
    assert hooks is None or not hooks.hooks


def test_elements_beyond_the_argument_are_refused_at_the_first_call(audio):
    plugin = declaring(other_tokens=OtherTokens("leading", count=1),
                       token_args={"rotary_embedding": TokenArg(dim=0, elements=(2,))})
    sadakit.register_plugin(plugin, name="bad-elements")
    try:
        sadakit.accelerate(audio, sadakit.SADAConfig.criterion_only(skip_steps=False))
        with pytest.raises(sadakit.PluginContractError,
                           match=r"'transformer_blocks.0': token_args\['rotary_embedding'\] declares elements=\(2,\), "
                                 r"but StableAudioDiTBlock received a tuple of 2"):
            audio(prompt=["a drum loop"], audio_end_in_s=1.0, num_inference_steps=2, output_type="pt")
    finally:
        sadakit.remove(audio)
        sadakit.unregister_plugin(plugin)


def test_trailing_others_on_two_axes_per_row():
    """A (B, 1, N + T, N + T) mask: query and key axes cut to each row's tokens, the T trailing
    entries kept; an axis of size 1 (broadcast) passes."""
    n, t, b = 6, 3, 2
    mask = torch.randn(b, 1, n + t, n + t)
    idx = torch.stack([torch.randperm(n)[:4].sort().values for _ in range(b)])
    got = _take_argument(mask, TokenArg(dim=(1, 2, 3), others="trailing"), idx, n)
    for row in range(b):
        keep = torch.cat([idx[row], torch.arange(n, n + t)])
        torch.testing.assert_close(got[row, 0], mask[row, 0][keep][:, keep], rtol=0, atol=0)


def test_leading_others_and_tuple_elements_shared():
    """Qwen-Image's pair (image (N, D), text (T, D)): only element 0 is cut, with one token set;
    a (T + N, D) table with leading text keeps its T rows."""
    n, t = 8, 5
    image, text = torch.randn(n, 4), torch.randn(t, 4)
    idx = torch.tensor([1, 4, 6])
    got = _take_argument((image, text), TokenArg(dim=0, elements=(0,)), idx, n)
    assert torch.equal(got[0], image[idx]) and got[1] is text
    table = torch.randn(t + n, 4)
    got = _take_argument((table, table), TokenArg(dim=0), idx, n)
    keep = torch.cat([torch.arange(t), idx + t])
    assert all(torch.equal(g, table[keep]) for g in got)


@pytest.mark.parametrize("trailing", [False, True])
def test_hidden_indices_include_the_other_tokens(trailing):
    n, others = 10, 3
    idx = torch.stack([torch.randperm(n)[:4].sort().values for _ in range(2)])
    hidden = torch.randn(2, n + others, 5)
    full = _with_others(idx, n, others, trailing)
    grid_part = hidden[:, :n] if trailing else hidden[:, others:]
    other_part = hidden[:, n:] if trailing else hidden[:, :others]
    picked = hidden.gather(1, full.unsqueeze(-1).expand(-1, -1, 5))
    expected = [torch.cat([grid_part[r, idx[r]], other_part[r]] if trailing else [other_part[r], grid_part[r, idx[r]]])
                for r in range(2)]
    assert torch.equal(picked, torch.stack(expected))
    assert _with_others(idx, n, 0, trailing) is idx
