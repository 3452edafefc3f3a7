"""Run by tests/test_context_parallel.py under torchrun: tiny Flux or Wan (text-to-video, CFG as
two call streams) with diffusers' context parallelism (Ulysses over the ranks, gloo on the CPU)
and SADA; each rank saves what it saw. Arguments: output directory, seed, ``flux`` or ``wan``."""

import json
import sys

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig, FlowMatchEulerDiscreteScheduler

import sadakit
from sadakit.core import criterion
from sadakit.testing import tiny_flux_pipeline, tiny_wan_pipeline

out_dir, seed, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.accelerator.device_count = lambda: 1  # diffusers divides the rank by it; a CPU machine has none
torch.manual_seed(0)
pipe = tiny_flux_pipeline() if model == "flux" else tiny_wan_pipeline()
# random-weight flow trajectories look unstable everywhere to the deterministic criterion; the
# stochastic sampler's noise gives stable steps (as in the Flux tests)
pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, stochastic_sampling=True)
pipe.transformer.set_attention_backend("native")
pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=dist.get_world_size()))
kw = dict(prompt=["a red square", "a blue circle"], height=64, width=64, num_inference_steps=12)
if model == "flux":
    kw.update(max_sequence_length=16, output_type="pt")
else:  # 9 frames of 64 x 64: a 3 x 4 x 4 token grid, 48 tokens split over the ranks; CFG streams
    kw.update(negative_prompt=["blurry", "dark"], num_frames=9, guidance_scale=4.0, max_sequence_length=16,
              output_type="latent")


def run():
    torch.manual_seed(seed)  # the sampler's noise: the same on every rank
    out = pipe(generator=torch.Generator().manual_seed(seed), **kw)
    return out.images if model == "flux" else out.frames


base = run()
results = {}
for mode in ("agree", "rank1-unstable"):
    if mode == "rank1-unstable" and rank == 1:  # one rank's criterion disagrees (as non-deterministic kernels could)
        criterion.group_scores = lambda scores, groups: torch.full((groups.shape[0],), float("inf"))
    sadakit.accelerate(pipe, sadakit.SADAConfig.criterion_only(warmup_calls=3, warmup_fraction=0.0))
    out = run()
    report = sadakit.report(pipe)
    sadakit.remove(pipe)
    results[mode] = {"decisions": report.decisions, "notes": report.notes}
    torch.save(out, f"{out_dir}/{mode}-rank{rank}.pt")
after = run()
torch.save({"base": base, "after": after}, f"{out_dir}/rank{rank}.pt")
results["blocks_hooked"] = any("_diffusers_hook" in m.__dict__ and "sadakit_sada_tokens" in m._diffusers_hook.hooks
                               for m in pipe.transformer.modules())
with open(f"{out_dir}/rank{rank}.json", "w") as fh:
    json.dump(results, fh)
dist.barrier()
dist.destroy_process_group()
