"""SADA on the bundled shapes model: baseline vs ``sadakit.accelerate`` (default and
criterion-only), calls computed, median wall ratio, PSNR/SSIM and prompt adherence.

    python scripts/bench_bundled.py --prompts 24 --repeats 3 --json /tmp/bundled_bench.json

Writes a comparison picture (baseline row over SADA rows) next to the JSON if asked.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import sadakit
from sadakit.bundled import compare_sada, load_classifier, load_shapes_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model-dir", type=Path, default=None, help="default: the bundled shapes-sd")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--picture", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_shapes_pipeline(args.model_dir)
    classifier = load_classifier()
    configs = {"default": None, "criterion_only": sadakit.SADAConfig.criterion_only()}
    rows, grids = [], []
    for name, config in configs.items():
        t = time.time()
        cmp = compare_sada(pipe, config, name, n_prompts=args.prompts, repeats=args.repeats, classifier=classifier)
        row = cmp.row()
        row["bench_seconds"] = time.time() - t
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not grids:
            grids.append(cmp.baseline_images)
        grids.append(cmp.sada_images)
    print("| config | calls computed / total | baseline s | SADA s | speed-up | PSNR dB | SSIM | adherence base -> SADA |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['network_calls']}/{r['denoiser_calls']} | {r['baseline_s']:.2f} | {r['sada_s']:.2f} "
            f"| {r['speedup']:.2f}x | {r['psnr_db']:.1f} | {r['ssim']:.3f} "
            f"| {100 * r['baseline_adherence']:.0f}% -> {100 * r['sada_adherence']:.0f}% |"
        )
    if args.json:
        args.json.write_text(json.dumps({"prompts": args.prompts, "repeats": args.repeats, "threads": args.threads,
                                         "rows": rows}, indent=2))
    if args.picture:
        from PIL import Image

        n = min(12, grids[0].shape[0])
        rows_img = [torch.cat(list(g[:n]), dim=2) for g in grids]  # (3, 32, 32 n)
        grid = torch.cat(rows_img, dim=1)
        array = (grid.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
        img = Image.fromarray(array)
        img.resize((img.width * 4, img.height * 4), Image.NEAREST).save(args.picture)


if __name__ == "__main__":
    main()
