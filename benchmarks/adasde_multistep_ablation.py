"""What a learned multistep file's parts contribute: variants of one file on its own learned grid.

    .venv/bin/python benchmarks/adasde_multistep_ablation.py sadakit/bundled/models/shapes-adasde/multistep-nfe5-gamma0-ends.safetensors /tmp/abl5
    .venv/bin/python benchmarks/bench_adasde_grids.py --model shapes --prompts 48 --grids default --threads 1 --seed 500 \
        --only euler:5:14.6:0.3 --adasde grid-euler=/tmp/abl5-grid-euler.safetensors grid-2m=/tmp/abl5-grid-2m.safetensors \
        kappa=/tmp/abl5-kappa.safetensors history=/tmp/abl5-history.safetensors

Writes ``<prefix>-grid-euler`` (the grid with plain Euler: what the grid alone gives), ``-grid-2m``
(the untrained DPM-Solver++ 2M weights on it), ``-kappa`` (only the learned exponent scales, the
history weights at the Euler start) and ``-history`` (only the learned history weights, kappa = 1).
"""

from __future__ import annotations

import argparse

import attrs
import torch

from sadakit.adasde import load_coefficients, save_coefficients
from sadakit.core.adasde import init_multistep_raw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="a multistep coefficient file")
    p.add_argument("prefix", help="output path prefix")
    args = p.parse_args(argv)
    cf = load_coefficients(args.file)
    if cf.meta.solver != "multistep":
        raise SystemExit(f"{args.file}: solver is {cf.meta.solver!r}, not 'multistep'")
    meta = attrs.evolve(cf.meta, training={})
    euler = init_multistep_raw(cf.sigmas, "euler")
    kappa_only = euler.clone()
    kappa_only[:, 3] = cf.raw[:, 3]
    history_only = cf.raw.clone()
    history_only[:, 3] = 0.0
    variants = {
        "grid-euler": (attrs.evolve(meta, solver="euler"), torch.zeros_like(cf.raw)),
        "grid-2m": (meta, init_multistep_raw(cf.sigmas, "dpm++2m")),
        "kappa": (meta, kappa_only),
        "history": (meta, history_only),
    }
    for name, (m, raw) in variants.items():
        path = f"{args.prefix}-{name}.safetensors"
        save_coefficients(path, raw, cf.sigmas, m)
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
