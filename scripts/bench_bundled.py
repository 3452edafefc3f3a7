"""SADA on a bundled model: baseline vs ``sadakit.accelerate`` (default and criterion-only),
calls computed, median wall ratio, fidelity and prompt adherence, all prompts in one batch.

    python scripts/bench_bundled.py --model shapes --prompts 16 --repeats 3 --threads 1 --json /tmp/bundled_bench.json
    python scripts/bench_bundled.py --model notes --prompts 16 --repeats 3 --threads 1
    python scripts/bench_bundled.py --model shapes-dit --prompts 16 --repeats 3 --threads 1

(``sadakit bench --pipeline bundled:shapes`` sets SADA beside the peer accelerators, one prompt
per case; this script is the bundled models' own ``compare``, the numbers of docs/bundled_models.md.)
Writes a comparison picture (baseline row over SADA rows) of an image model (shapes, shapes-dit) if asked.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import sadakit
from sadakit.bench.script_args import script_parser, start, write_json
from sadakit.bundled import notes, shapes, shapes_dit

MODELS = {"shapes": shapes, "shapes-dit": shapes_dit, "notes": notes}


def main() -> None:
    ap = script_parser(__doc__, repeats=3, threads=1)
    ap.add_argument("--model", choices=tuple(MODELS), default="shapes")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--model-dir", type=Path, default=None, help="default: the bundled model")
    ap.add_argument("--picture", type=Path, default=None, help="image models only: baseline row over the SADA rows")
    args = ap.parse_args()
    start(args)
    model = MODELS[args.model]
    pipe = model.load_pipeline(args.model_dir)
    configs = {"default": None, "criterion_only": sadakit.SADAConfig.criterion_only()}
    rows, outputs = [], []
    for name, config in configs.items():
        t = time.time()
        cmp = model.compare(pipe, config, name, n_prompts=args.prompts, seed=args.seed, repeats=args.repeats)
        rows.append({**cmp.row(), "bench_seconds": time.time() - t})
        outputs += [cmp.baseline_output, cmp.sada_output] if not outputs else [cmp.sada_output]
    fidelity = [k for k in rows[0] if k.endswith("_db") or k == "ssim"]
    print(f"| config | calls computed / total | baseline s | SADA s | speed-up | {' | '.join(fidelity)} | adherence base -> SADA |")
    print("|---|---|---|---|---|" + "---|" * len(fidelity) + "---|")
    for r in rows:
        adh = {k: (r["baseline_adherence"][k], r["sada_adherence"][k]) for k in ("all", "pitch", "timbre") if k in r["sada_adherence"]}
        adherence = ", ".join(f"{k} {a:.0%} -> {b:.0%}" for k, (a, b) in adh.items())
        cells = " | ".join(f"{r[k]:.3f}" if k == "ssim" else f"{r[k]:.1f}" for k in fidelity)
        print(f"| {r['config']} | {r['network_calls']}/{r['denoiser_calls']} | {r['baseline_s']:.2f} | {r['sada_s']:.2f} "
              f"| {r['speedup']:.2f}x | {cells} | {adherence} |")
    write_json(args, rows)
    if args.picture and args.model != "notes":
        from sadakit.visual import save_labelled

        grid = torch.cat([torch.cat(list(images[:8]), dim=-1) for images in outputs], dim=-2)
        save_labelled(grid, args.picture, rows=["baseline"] + list(configs))
        print(f"picture: {args.picture}")


if __name__ == "__main__":
    main()
