"""Train the bundled "shapes-dit" Flux model (FluxTransformer2DModel + CLIP + T5, flow matching).

Stages (``--stage``):

1. ``transformer``: the Flux transformer and both text encoders trained jointly with the
   flow-matching objective (rectified flow, velocity ``eps - x0``) on latents of
   :mod:`sadakit.bundled.data_shapes` encoded by the shapes-sd VAE (copied into the pipeline),
   10% empty prompts for classifier-free guidance, a fraction of the noise levels drawn from
   the noisiest 15% (where only the prompt tells the position), EMA weights saved as a
   ``FluxPipeline``. A full checkpoint is written to ``--work`` every ``--checkpoint-every``
   steps; ``--resume`` continues the same run from it (same batches as an uninterrupted run).
2. ``eval``: prompt adherence of the saved pipeline (48 prompts x ``--eval-seeds``) at the
   default steps and guidance, judged by the shipped shapes classifier; ``leak``: does the
   position follow the prompt or the initial noise (flip the noise left-right)?

Everything is seeded; run times are logged and written to ``train_log.json`` in the model
directory. Usage (about an hour with one thread)::

    OMP_NUM_THREADS=1 python scripts/train_shapes_dit.py --stage all --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import FluxPipeline

from sadakit.bundled import data_shapes
from sadakit.bundled import shapes_dit as S
from sadakit.bundled.training import (
    EMA,
    Checkpoint,
    LoopResult,
    drop_local_paths,
    encode_latent_bank,
    flow_matching_pair,
    log,
    run_loop,
    sample_sigmas,
    seeded,
    warmup_cosine,
)

WORK = Path("/tmp/shapes-dit-train")
OUT = S.MODEL_DIR


class TextConditioning:
    """Both text encoders on the training prompts, exactly as ``FluxPipeline.encode_prompt``
    feeds them (CLIP pooled output at eos; T5 sequence without an attention mask, padded to
    ``max_sequence_length``), with gradients."""

    def __init__(self, text_encoder, text_encoder_2) -> None:
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2
        prompts = data_shapes.conditioning_prompts()
        kwargs = dict(padding="max_length", max_length=S.TOKENIZER_MAX_LENGTH, truncation=True, return_tensors="pt")
        self.clip_ids = S.build_tokenizer()(prompts, **kwargs).input_ids
        self.t5_ids = S.build_tokenizer_2()(prompts, **kwargs).input_ids

    def __call__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pooled (n, 64), sequence (n, 40, 64))`` of the prompts ``index`` (0 = empty)."""
        used, inverse = torch.unique(index, return_inverse=True)  # encode each prompt once per batch
        pooled = self.text_encoder(self.clip_ids[used]).pooler_output
        sequence = self.text_encoder_2(self.t5_ids[used])[0]
        return pooled[inverse], sequence[inverse]


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(n, 4, 8, 8) latents -> (n, 16, 16) tokens, the pipeline's own 2x2 packing."""
    n, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, n, c, h, w)


def train_transformer(steps: int, batch: int, seed: int, lr: float, bank_size: int, high_noise_frac: float,
                      save_every: int, eval_every: int, eval_prompts: int, checkpoint_every: int,
                      resume: bool) -> dict:
    g = seeded(seed, 20)
    vae = S.build_vae()
    sf = vae.config.scaling_factor
    t0 = time.time()
    labels, means, stds = encode_latent_bank(lambda x: vae.encode(x * 2 - 1).latent_dist,
                                             lambda n: data_shapes.sample_batch(n, g), bank_size)
    label_index = data_shapes.conditioning_index(labels)
    log(f"latent bank {tuple(means.shape)} in {time.time() - t0:.0f}s")

    transformer = S.build_transformer().train()
    text_encoder, text_encoder_2 = S.build_text_encoder().train(), S.build_text_encoder_2().train()
    text = TextConditioning(text_encoder, text_encoder_2)
    latent_side = means.shape[-1]
    img_ids = FluxPipeline._prepare_latent_image_ids(batch, latent_side // 2, latent_side // 2, "cpu", torch.float32)
    txt_ids = torch.zeros(S.TOKENIZER_MAX_LENGTH, 3)

    modules = (transformer, text_encoder, text_encoder_2)
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps)
    ema = EMA(*modules)

    def loss_of_step(step: int) -> torch.Tensor:
        idx = torch.randint(len(means), (batch,), generator=g)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=g)) * sf  # shift_factor is 0
        cond = label_index[idx].clone()
        cond[torch.rand(batch, generator=g) < 0.1] = 0
        pooled, sequence = text(cond)
        sigmas = sample_sigmas(batch, high_noise_frac, g)
        noise = torch.randn(z0.shape, generator=g)
        zt, target = flow_matching_pair(z0, noise, sigmas)
        pred = transformer(hidden_states=pack(zt), timestep=sigmas, pooled_projections=pooled,
                           encoder_hidden_states=sequence, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return F.mse_loss(pred, pack(target))

    def on_step_end(step: int, result: LoopResult) -> bool:
        last = step == steps - 1
        if (step + 1) % save_every == 0 or last:
            save_pipeline(vae, *ema.averaged)
        if eval_every and ((step + 1) % eval_every == 0 or last):
            t_eval = time.time()
            pipe = S.assemble_pipeline(vae, ema.averaged[1], ema.averaged[2], ema.averaged[0])
            pipe.set_progress_bar_config(disable=True)
            res = S.evaluate(pipe, n_prompts=eval_prompts, seeds=(0,))
            result.history.append({"step": step + 1, "seconds": result.seconds, **res.as_dict()})
            log(f"transformer step {step + 1} adherence {res.as_dict()} ({time.time() - t_eval:.0f}s)")
        return False

    result = run_loop(steps, loss_of_step, opt, sched, params, 1.0, ema, "transformer", on_step_end=on_step_end,
                      checkpoint=Checkpoint(WORK / "checkpoint.pt", checkpoint_every, resume),
                      modules=modules, generators=(g,))
    params_count = sum(p.numel() for p in transformer.parameters())
    info = {"steps": steps, "batch": batch, "lr": lr, "seconds": result.seconds, "final_loss_ema": result.running_loss,
            "bank_size": len(means), "high_noise_frac": high_noise_frac, "resumed_at_step": result.first_step or None,
            "transformer_parameters": params_count, "objective": "flow matching (velocity eps - x0)",
            "adherence_curve": result.history}
    log(f"transformer done {info}")
    return info


def save_pipeline(vae, transformer, text_encoder, text_encoder_2) -> None:
    pipe = S.assemble_pipeline(vae, text_encoder, text_encoder_2, transformer)
    pipe.save_pretrained(OUT, safe_serialization=True)
    drop_local_paths(OUT)
    log(f"saved pipeline to {OUT}")


def evaluate(seeds: tuple[int, ...], guidances: tuple[float, ...], steps: int) -> dict:
    t0 = time.time()
    pipe = S.load_pipeline(OUT)
    info: dict = {"steps": steps, "seeds": list(seeds)}
    for guidance in guidances:
        res = S.evaluate(pipe, n_prompts=None, seeds=seeds, num_inference_steps=steps, guidance_scale=guidance)
        info[f"guidance_{guidance:g}"] = res.as_dict()
        log(f"adherence at {steps} steps, guidance {guidance:g}: {res.as_dict()}")
    info["seconds"] = time.time() - t0
    return info


def noise_leak(seeds: tuple[int, ...]) -> dict:
    """Flip each initial noise left-right (prompt unchanged) and count how often the generated
    column flips with it: a model that reads position from the prompt keeps it."""
    pipe = S.load_pipeline(OUT)
    judge = S.load_classifier()
    prompts = S.eval_prompts(None)
    target = torch.tensor([data_shapes.parse_prompt(p).position for p in prompts])
    plain, flipped = [], []
    for seed in seeds:
        noise = torch.cat([torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1000 * seed + i))
                           for i in range(len(prompts))])
        for latents, out in ((noise, plain), (noise.flip(-1), flipped)):
            images = pipe(prompts, negative_prompt=[""] * len(prompts), latents=pack(latents),
                          num_inference_steps=S.DEFAULT_STEPS, **{k: v for k, v in S.CALL_KWARGS.items()
                                                                 if k != "negative_prompt"}, output_type="pt").images
            out.append(judge.predict(S.images_to_tensor(images))[:, 2])
    plain_t, flipped_t, target_t = torch.cat(plain), torch.cat(flipped), target.repeat(len(seeds))
    info = {"n": len(target_t), "position_matches_prompt": (plain_t == target_t).float().mean().item(),
            "flipped_position_matches_prompt": (flipped_t == target_t).float().mean().item(),
            "flip_noise_flips_column": ((plain_t % 2) != (flipped_t % 2)).float().mean().item()}
    log(f"noise leak {info}")
    return info


def main() -> None:
    global WORK, OUT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=("all", "transformer", "eval", "leak"), default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(WORK), help="scratch directory (the resumable checkpoint)")
    ap.add_argument("--out", default=str(S.MODEL_DIR), help="pipeline directory (default: the shipped model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--bank-size", type=int, default=8192)
    ap.add_argument("--high-noise-frac", type=float, default=0.25,
                    help="fraction of noise levels drawn from sigma >= 0.85, where only the prompt tells position")
    ap.add_argument("--save-every", type=int, default=500, help="save the EMA pipeline every N steps")
    ap.add_argument("--checkpoint-every", type=int, default=250, help="write the resumable checkpoint every N steps")
    ap.add_argument("--resume", action="store_true", help="continue the run from the checkpoint in --work")
    ap.add_argument("--eval-every", type=int, default=500,
                    help="adherence of the EMA weights on --eval-prompts prompts every N steps (0: off)")
    ap.add_argument("--eval-prompts", type=int, default=16)
    ap.add_argument("--eval-seeds", type=int, default=2)
    ap.add_argument("--eval-steps", type=int, default=S.DEFAULT_STEPS)
    ap.add_argument("--eval-guidance", type=float, nargs="+", default=[S.DEFAULT_GUIDANCE])
    args = ap.parse_args()
    if args.bank_size < 256 or args.bank_size % 256:
        ap.error(f"--bank-size must be a positive multiple of 256 (latents are encoded 256 at a time), got {args.bank_size}")
    torch.set_num_threads(args.threads)
    WORK, OUT = Path(args.work), Path(args.out)
    WORK.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    log_file = OUT / "train_log.json"
    record: dict = {"threads": args.threads}
    started = time.time()
    if args.stage in ("all", "transformer"):
        record["transformer"] = train_transformer(
            args.steps, args.batch, args.seed, args.lr, args.bank_size, args.high_noise_frac, args.save_every,
            args.eval_every, args.eval_prompts, args.checkpoint_every, args.resume)
    if args.stage in ("all", "eval"):
        record["adherence"] = evaluate(tuple(range(args.eval_seeds)), tuple(args.eval_guidance), args.eval_steps)
    if args.stage == "leak":
        record["noise_leak"] = noise_leak(tuple(range(args.eval_seeds)))
    merged = json.loads(log_file.read_text()) if log_file.exists() else {}
    merged.setdefault("stage_seconds", {})[args.stage] = time.time() - started
    merged.update(record)
    log_file.write_text(json.dumps(merged, indent=2))
    log(f"total {time.time() - started:.0f}s; log in {log_file}")


if __name__ == "__main__":
    main()
