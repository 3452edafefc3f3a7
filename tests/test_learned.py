"""A network's FLOPs and token counts, learned on its first call of a shape, outlive a session:
accelerating the same pipeline again does not run the flop-counted call again."""

import random

import torch

import sadakit
from sadakit.runtime.accounting import Accounting
from sadakit.testing.pipelines import tiny_sd_pipeline


def _generate(pipe, seed, config):
    sadakit.accelerate(pipe, config)
    try:
        out = pipe(prompt=["a cat", "a dog"], num_inference_steps=20, output_type="latent", guidance_scale=4.0,
                   generator=torch.Generator().manual_seed(seed)).images
        return out, sadakit.report(pipe)
    finally:
        sadakit.remove(pipe)


def test_a_second_session_reuses_what_the_first_measured(monkeypatch):
    measured = []
    original = Accounting.forward_measured

    def counting(self, forward, args, kwargs, shape):
        measured.append(tuple(shape))
        return original(self, forward, args, kwargs, shape)

    monkeypatch.setattr(Accounting, "forward_measured", counting)
    pipe = tiny_sd_pipeline(seed=random.randrange(1000))
    seed = random.randrange(1000)
    # partial calls only: the blocks' token counts are what the second session must know
    config = sadakit.SADAConfig(skip_steps=False, token_sparsity=True, max_token_fraction=1.0)
    first, rep_first = _generate(pipe, seed, config)
    assert len(measured) == 1
    second, rep_second = _generate(pipe, seed, config)
    assert len(measured) == 1  # nothing measured again
    assert torch.equal(first, second)
    assert rep_second.flops_per_call == rep_first.flops_per_call > 0
    assert rep_second.flops_saved == rep_first.flops_saved > 0
    assert rep_second.decisions == rep_first.decisions
    assert rep_second.partial_calls == rep_first.partial_calls > 0
    # another config on the same network: still known; another network: measured
    _generate(pipe, seed, sadakit.SADAConfig(budget=0.5))
    assert len(measured) == 1
    other = tiny_sd_pipeline(seed=random.randrange(1000))
    _, rep_other = _generate(other, seed, config)
    assert len(measured) == 2 and rep_other.flops_per_call == rep_first.flops_per_call
