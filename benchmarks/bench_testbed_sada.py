"""SADA's skipping strategies on the analytic testbed (issue 3): NFE vs distance to the
unaccelerated output and to the exact ODE solution, against simply taking fewer steps.

    .venv/bin/python benchmarks/bench_testbed_sada.py --configs latent-4x16x16 gmm64-16 --steps 50 20
"""

import argparse
import json
from dataclasses import asdict

import torch

from sadakit.testbeds.sada_eval import evaluate, markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["latent-4x16x16", "gmm64-16"])
    parser.add_argument("--solvers", nargs="+", default=["euler", "dpm++2m", "flow-euler"])
    parser.add_argument("--steps", nargs="+", type=int, default=[50, 20])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for config in args.configs:
        for solver in args.solvers:
            for steps in args.steps:
                rows.extend(evaluate(config, solver, steps, n_samples=args.samples))
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)


if __name__ == "__main__":
    main()
