"""SADA under diffusers' context parallelism: every rank takes the same decision for every call.

Run for real on the CPU: tiny Flux and tiny Wan text-to-video (CFG as two call streams) with
``enable_parallelism(ContextParallelConfig(ulysses_degree=2))`` under torchrun with gloo
(tests/context_parallel_worker.py). If one rank's criterion disagrees
(as non-deterministic kernels could make it), the reduced vote keeps the ranks together;
without it, one rank skips a call the other computes and the collectives break.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_bench import _free_port

WORKER = Path(__file__).with_name("context_parallel_worker.py")


# flux: slow (two more processes; wan exercises the same all-ranks decision on a video grid)
@pytest.mark.parametrize("model", [pytest.param("flux", marks=pytest.mark.slow), "wan"])
def test_ranks_decide_together_and_remove_restores_the_parallel_pipeline(tmp_path, model):
    seed = int(torch.randint(0, 2**31 - 1, ()))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), str(WORKER), str(tmp_path), str(seed), model]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for mode in ("agree", "rank1-unstable"):
        assert ranks[0][mode]["decisions"] == ranks[1][mode]["decisions"], mode
        decisions = ranks[0][mode]["decisions"]
        if mode == "agree":
            assert "S" in decisions or "M" in decisions, decisions
        else:  # rank 1 never finds a call stable: the vote makes rank 0 compute every call too
            assert set(decisions) == {"F"}, decisions
        assert any("context parallelism over 2 ranks" in note for note in ranks[0][mode]["notes"])
        outs = [torch.load(tmp_path / f"{mode}-rank{r}.pt") for r in (0, 1)]
        assert torch.equal(outs[0], outs[1]) and torch.isfinite(outs[0]).all()  # the gathered outputs agree
    for r in (0, 1):
        saved = torch.load(tmp_path / f"rank{r}.pt")
        assert torch.equal(saved["after"], saved["base"])  # remove: the parallel pipeline as it was
        assert not ranks[r]["blocks_hooked"]
