"""Train the bundled "shapes" Stable Diffusion model and its adherence classifier.

Stages (run all, or one at a time with ``--stage``; later stages read earlier outputs):

1. ``vae``: AutoencoderKL on generator images (MSE + small KL), scaling factor set to
   1 / std of the latents, as SD does.
2. ``classifier``: the independent CNN that reads shape / colour / position, trained on
   generator images with blur and noise augmentation (generations are slightly soft).
3. ``unet``: UNet2DConditionModel + CLIP text encoder trained jointly, eps-prediction DDPM
   loss on the scaled-linear schedule with min-SNR-5 weighting (converges faster on a
   short budget), 10% empty prompts for classifier-free guidance, EMA weights saved.
4. ``eval``: prompt adherence of the saved pipeline at the default steps.

Everything is seeded; run times are printed and written to ``train_log.json`` in the
model directory. Usage::

    python scripts/train_shapes.py --stage all --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from sadakit.bundled import data_shapes
from sadakit.bundled import shapes as S
from sadakit.bundled.training import (
    EMA,
    Checkpoint,
    LoopResult,
    drop_local_paths,
    encode_latent_bank,
    log,
    run_loop,
    seeded,
    v_prediction_pair,
    warmup_cosine,
)

#: Scratch directory (stage outputs) and the pipeline directory written to; both set from
#: ``--work`` / ``--out`` (the default ``--out`` is the shipped model).
WORK = Path("/tmp/shapes-train")
OUT = S.MODEL_DIR
#: Where the classifier stage writes (and evaluation reads) the adherence classifier.
CLASSIFIER_DIR = S.CLASSIFIER_FILE.parent


def blur_noise(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Augmentation for the classifier: random box blur, noise and brightness shifts."""
    n = images.shape[0]
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(n, 1, 1, 1, generator=g)
    out = mix * blurred + (1 - mix) * images
    out = out + 0.04 * torch.randn(out.shape, generator=g) + 0.05 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)
    return out.clamp(0, 1)


def train_vae(steps: int, batch: int, seed: int) -> dict:
    g = seeded(seed)
    vae = S.build_vae().train()
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)

    def loss_of_step(step: int) -> torch.Tensor:
        _, x = data_shapes.sample_batch(batch, g)
        x = x * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        return F.mse_loss(rec, x) + 1e-6 * post.kl().mean()

    result = run_loop(steps, loss_of_step, opt, sched, label="vae")
    vae.eval()
    with torch.no_grad():
        _, x = data_shapes.sample_batch(512, torch.Generator().manual_seed(seed + 1))
        z = vae.encode(x * 2 - 1).latent_dist.mean
        rec = vae.decode(z).sample
        test_mse = F.mse_loss(rec, x * 2 - 1).item()
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    vae.save_pretrained(WORK / "vae")
    info = {"steps": steps, "batch": batch, "seconds": result.seconds, "test_mse_pm1": test_mse,
            "scaling_factor": float(1.0 / z.std())}
    log(f"vae done {info}")
    return info


def finetune_decoder(steps: int, batch: int, seed: int) -> dict:
    """Sharpen the decoder with the encoder frozen (L1 + MSE: MSE alone rounds the corners
    of squares, which the classifier then reads as circles). Latents do not change, so the
    UNet can be trained on the encoder's latents before, after or while this runs."""
    from diffusers import AutoencoderKL

    g = seeded(seed, 30)
    vae = AutoencoderKL.from_pretrained(WORK / "vae")
    vae.eval()
    vae.decoder.train()
    for p in list(vae.encoder.parameters()) + list(vae.quant_conv.parameters()):
        p.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)

    def loss_of_step(step: int) -> torch.Tensor:
        _, x = data_shapes.sample_batch(batch, g)
        x = x * 2 - 1
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=g)
        rec = vae.decode(z).sample
        return F.l1_loss(rec, x) + F.mse_loss(rec, x)

    result = run_loop(steps, loss_of_step, opt, sched, label="decoder")
    vae.eval()
    with torch.no_grad():
        _, x = data_shapes.sample_batch(512, torch.Generator().manual_seed(seed + 1))
        rec = vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample
        test_mse = F.mse_loss(rec, x * 2 - 1).item()
    vae.save_pretrained(WORK / "vae")
    info = {"steps": steps, "batch": batch, "seconds": result.seconds, "test_mse_pm1": test_mse}
    log(f"decoder done {info}")
    return info


def train_classifier(steps: int, batch: int, seed: int) -> dict:
    g = seeded(seed, 10)
    model = S.ShapesClassifier().train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    names = ("shape", "colour", "position")

    def loss_of_step(step: int) -> torch.Tensor:
        labels, x = data_shapes.sample_batch(batch, g)
        logits = model(blur_noise(x, g))
        return sum(F.cross_entropy(logits[k], labels[:, i]) for i, k in enumerate(names))

    result = run_loop(steps, loss_of_step, opt, sched, label="classifier", log_every=100)
    model.eval()
    labels, x = data_shapes.sample_batch(2000, torch.Generator().manual_seed(seed + 11))
    acc = (model.predict(x) == labels).all(dim=1).float().mean().item()
    out = CLASSIFIER_DIR / S.CLASSIFIER_FILE.name
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    (CLASSIFIER_DIR / S.CLASSIFIER_CONFIG.name).write_text(json.dumps({"width": model.width, "image_size": data_shapes.IMAGE_SIZE}, indent=2))
    info = {"steps": steps, "batch": batch, "seconds": result.seconds, "heldout_accuracy_all": acc}
    log(f"classifier done {info}")
    return info


def v_loss_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Per-sample weight of the v-prediction MSE: ``(min(SNR, gamma) + 1) / (SNR + 1)``.

    ``|v_hat - v|^2 = (SNR + 1) |x0_hat - x0|^2``, so this is an x0-error weight of
    ``min(SNR, gamma) + 1``: capped at high SNR like min-SNR-gamma (Hang et al. 2023), but at
    least 1 at high noise. The plain min-SNR rule for v, ``min(SNR, gamma) / (SNR + 1)``, is
    ~SNR there and exactly 0 at zero terminal SNR, i.e. it would not train the step where the
    layout (the position asked for in the prompt) is decided.
    """
    a = alphas_cumprod[t]
    snr = a / (1 - a)
    return (torch.clamp(snr, max=gamma) + 1) / (snr + 1)


def sample_timesteps(n: int, num_train: int, high_noise_frac: float, g: torch.Generator) -> torch.Tensor:
    """Uniform timesteps, except that a fraction ``high_noise_frac`` is drawn from the last 15%
    (t >= 850). Why: on the 8x8 latent a quadrant mean (64 values) still shows where the shape
    is down to t ~850 (its SNR is 1.1 at t=800, 0.19 at 900, 0 at 999), so only those steps
    teach the model to take the position from the prompt; uniform sampling gives them 15%
    of the batch."""
    t = torch.randint(0, num_train, (n,), generator=g)
    if high_noise_frac <= 0:
        return t  # no extra draws: same random stream as plain uniform sampling
    high = torch.rand(n, generator=g) < high_noise_frac
    start = int(0.85 * num_train)
    t[high] = torch.randint(start, num_train, (int(high.sum()),), generator=g)
    return t


def classifier() -> S.ShapesClassifier:
    """The adherence classifier in ``CLASSIFIER_DIR`` (the shipped one unless --classifier-out)."""
    return S.load_classifier(CLASSIFIER_DIR / S.CLASSIFIER_FILE.name)


def load_vae():
    """The fine-tuned VAE: from the work directory if the vae/decoder stages ran in this
    session, otherwise the one shipped in the pipeline (the UNet only needs its encoder)."""
    from diffusers import AutoencoderKL

    for source in (WORK / "vae", OUT / "vae"):
        if (source / "config.json").is_file():
            log(f"VAE from {source}")
            return AutoencoderKL.from_pretrained(source).eval()
    raise FileNotFoundError(f"no trained VAE in {WORK / 'vae'} or {OUT / 'vae'}: run --stage vae first")


def train_unet(steps: int, batch: int, seed: int, lr: float, bank_size: int, resume: bool = False,
               save_every: int = 500, eval_every: int = 0, eval_prompts: int = 16,
               high_noise_frac: float = 0.0, stop_after: int | None = None, continue_run: bool = False) -> dict:
    """``resume`` warm-starts from the saved pipeline (fresh optimiser and schedule);
    ``continue_run`` continues an interrupted run from its checkpoint in ``WORK``."""
    g = seeded(seed, 20)
    vae = load_vae()
    sf = vae.config.scaling_factor
    # A bank of encoded latents (posterior samples re-drawn from stored mean/std each step).
    t0 = time.time()
    labels, means, stds = encode_latent_bank(lambda x: vae.encode(x * 2 - 1).latent_dist,
                                             lambda n: data_shapes.sample_batch(n, g), bank_size)
    log(f"latent bank {means.shape} in {time.time() - t0:.0f}s")

    tokenizer = S.build_tokenizer()
    if resume:
        # continue from the saved (EMA) weights with a fresh optimiser and schedule
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        text_encoder = CLIPTextModel.from_pretrained(OUT / "text_encoder").train()
        unet = UNet2DConditionModel.from_pretrained(OUT / "unet").train()
        log("resumed from the saved pipeline weights")
    else:
        text_encoder = S.build_text_encoder().train()
        unet = S.build_unet().train()
    scheduler = S.build_scheduler()
    alphas_cumprod = scheduler.alphas_cumprod
    # Unique prompts: index 0 is the empty prompt (CFG's unconditional branch).
    ids = tokenizer(data_shapes.conditioning_prompts(), padding="max_length", max_length=S.TOKENIZER_MAX_LENGTH,
                    truncation=True, return_tensors="pt").input_ids
    label_index = data_shapes.conditioning_index(labels)

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps)
    ema = EMA(unet, text_encoder)
    ema_unet, ema_te = ema.averaged

    def loss_of_step(step: int) -> torch.Tensor:
        idx = torch.randint(len(means), (batch,), generator=g)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=g)) * sf
        cond = label_index[idx].clone()
        cond[torch.rand(batch, generator=g) < 0.1] = 0
        # encode only the unique prompts used in this batch
        used, inverse = torch.unique(cond, return_inverse=True)
        hidden = text_encoder(ids[used]).last_hidden_state[inverse]
        t = sample_timesteps(batch, scheduler.config.num_train_timesteps, high_noise_frac, g)
        noise = torch.randn(z0.shape, generator=g)
        # alphas_cumprod[999] is 2**-24 (zero terminal SNR, as the Euler sampler sees it): the
        # input at t=999 is noise only, so position can come from nowhere but the prompt.
        zt, target = v_prediction_pair(z0, noise, alphas_cumprod, t)
        pred = unet(zt, t, hidden).sample
        w = v_loss_weight(alphas_cumprod, t)
        return (w * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()

    def on_step_end(step: int, result: LoopResult) -> bool:
        last = step == steps - 1 or step + 1 == stop_after
        if (step + 1) % save_every == 0 or last:
            save_pipeline(vae, ema_te, ema_unet)
        if eval_every and ((step + 1) % eval_every == 0 or last):
            # learning curve of adherence on the fixed prompt subset (seed 0), EMA weights
            t_eval = time.time()
            pipe = S.assemble_pipeline(vae, ema_te, ema_unet)
            pipe.set_progress_bar_config(disable=True)
            res = S.evaluate(pipe, n_prompts=eval_prompts, seeds=(0,), classifier=classifier())
            result.history.append({"step": step + 1, "seconds": result.seconds, **res.as_dict()})
            log(f"unet step {step + 1} adherence {res.as_dict()} ({time.time() - t_eval:.0f}s)")
        return step + 1 == stop_after

    result = run_loop(steps, loss_of_step, opt, sched, params, 1.0, ema, "unet", on_step_end=on_step_end,
                      checkpoint=Checkpoint(WORK / "unet_checkpoint.pt", save_every, continue_run),
                      modules=(unet, text_encoder), generators=(g,))
    running, curve = result.running_loss, result.history
    info = {"steps": steps, "batch": batch, "lr": lr, "seconds": result.seconds, "final_loss_ema": running,
            "bank_size": len(means), "resumed": resume, "high_noise_frac": high_noise_frac,
            "stopped_after": stop_after, "prediction_type": scheduler.config.prediction_type,
            "zero_terminal_snr": scheduler.config.rescale_betas_zero_snr, "adherence_curve": curve}
    log(f"unet done {info}")
    return info


def save_pipeline(vae, text_encoder, unet) -> None:
    pipe = S.assemble_pipeline(vae, text_encoder, unet)
    pipe.save_pretrained(OUT, safe_serialization=True)
    drop_local_paths(OUT)
    log(f"saved pipeline to {OUT}")


def evaluate(n_prompts: int | None, seeds: tuple[int, ...]) -> dict:
    t0 = time.time()
    pipe = S.load_pipeline(OUT)
    res = S.evaluate(pipe, n_prompts=n_prompts, seeds=seeds, classifier=classifier())
    info = {**res.as_dict(), "steps": S.DEFAULT_STEPS, "guidance": S.DEFAULT_GUIDANCE, "seeds": list(seeds),
            "seconds": time.time() - t0}
    log(f"adherence {info}")
    return info


def noise_leak(seeds: tuple[int, ...], model_dir: Path | None = None) -> dict:
    """Does the model place the shape where the prompt says, or where the initial noise
    happens to look like a shape?

    On a schedule without zero terminal SNR the training input at t=999 still contains
    ``sqrt(alpha_bar) * z0``; a model that learned to read the position from that leak
    follows the low frequencies of the initial noise at inference. Two tests:

    * correlation: project each initial noise onto the four position templates (mean
      training latent of each quadrant minus the overall mean) and compare the argmax with
      the position the classifier reads from the generation;
    * intervention: flip every initial noise left-right and count how often the generated
      horizontal position flips with it (the prompt did not change).
    """
    from diffusers import AutoencoderKL

    t0 = time.time()
    pipe = S.load_pipeline(model_dir or OUT)
    judge = classifier()
    vae: AutoencoderKL = pipe.vae
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        labels, x = data_shapes.sample_batch(2048, g)
        z0 = vae.encode(x * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    templates = torch.stack([z0[labels[:, 2] == q].mean(0) for q in range(len(data_shapes.POSITIONS))])
    templates = templates - templates.mean(0, keepdim=True)
    prompts = S.eval_prompts(None)
    target = torch.tensor([data_shapes.parse_prompt(p).position for p in prompts])
    shape = (1, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    rows = []
    for seed in seeds:
        noise = torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(1000 * seed + i))
                           for i in range(len(prompts))])
        from_noise = torch.einsum("nchw,qchw->nq", noise, templates).argmax(1)
        out = {}
        for name, latents in (("plain", noise), ("flipped", noise.flip(-1))):
            images = pipe(prompts, num_inference_steps=S.DEFAULT_STEPS, guidance_scale=S.DEFAULT_GUIDANCE,
                          latents=latents.clone(), output_type="pt").images
            out[name] = judge.predict(S.images_to_tensor(images))[:, 2]
        rows.append((target, from_noise, out["plain"], out["flipped"]))
    target, from_noise, plain, flipped = (torch.cat(c) for c in zip(*rows))
    # positions are (top left, top right, bottom left, bottom right): column = index % 2
    info = {
        "n": len(target),
        "position_matches_prompt": (plain == target).float().mean().item(),
        "position_matches_noise_template": (plain == from_noise).float().mean().item(),
        "noise_template_matches_prompt": (from_noise == target).float().mean().item(),
        "flip_noise_flips_column": ((plain % 2) != (flipped % 2)).float().mean().item(),
        "flipped_position_matches_prompt": (flipped == target).float().mean().item(),
        "seeds": list(seeds),
        "seconds": time.time() - t0,
    }
    log(f"noise leak {info}")
    return info


def main() -> None:
    global WORK, OUT, CLASSIFIER_DIR
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=("all", "vae", "decoder", "classifier", "unet", "install-vae", "eval", "leak"),
                    default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(WORK), help="scratch directory (stage outputs)")
    ap.add_argument("--out", default=str(S.MODEL_DIR), help="pipeline directory (default: the shipped model)")
    ap.add_argument("--classifier-out", default=str(CLASSIFIER_DIR),
                    help="adherence classifier directory, written by the classifier stage and read by evaluation "
                         "(default: the shipped classifier)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vae-steps", type=int, default=400)
    ap.add_argument("--decoder-steps", type=int, default=500)
    ap.add_argument("--classifier-steps", type=int, default=500)
    ap.add_argument("--unet-steps", type=int, default=1300)
    ap.add_argument("--unet-batch", type=int, default=32)
    ap.add_argument("--unet-lr", type=float, default=2e-3)
    ap.add_argument("--resume", action="store_true",
                    help="unet stage: warm-start from the saved weights (fresh optimiser, schedule and batches)")
    ap.add_argument("--continue-run", action="store_true",
                    help="unet stage: continue an interrupted run from its checkpoint in --work (same batches)")
    ap.add_argument("--bank-size", type=int, default=8192)
    ap.add_argument("--save-every", type=int, default=500, help="unet stage: save the EMA pipeline every N steps")
    ap.add_argument("--eval-every", type=int, default=0,
                    help="unet stage: adherence of the EMA weights on --eval-prompts prompts every N steps (0: off)")
    ap.add_argument("--eval-prompts", type=int, default=16)
    ap.add_argument("--stop-after", type=int, default=None,
                    help="unet stage: stop (and save) after this many steps of the --unet-steps LR schedule")
    ap.add_argument("--high-noise-frac", type=float, default=0.0,
                    help="unet stage: fraction of timesteps drawn from t >= 850, where only the prompt tells position")
    ap.add_argument("--eval-seeds", type=int, default=2)
    ap.add_argument("--tag", default="", help="leak stage: suffix of its train_log.json key (e.g. 'before')")
    args = ap.parse_args()
    if args.bank_size < 256 or args.bank_size % 256:
        ap.error(f"--bank-size must be a positive multiple of 256 (latents are encoded 256 at a time), got {args.bank_size}")
    torch.set_num_threads(args.threads)
    WORK, OUT, CLASSIFIER_DIR = Path(args.work), Path(args.out), Path(args.classifier_out)
    WORK.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    log_file = OUT / "train_log.json"
    record: dict = {"threads": args.threads}
    started = time.time()
    if args.stage in ("all", "vae"):
        record["vae"] = train_vae(args.vae_steps, 32, args.seed)
    if args.stage in ("all", "decoder"):
        record["decoder"] = finetune_decoder(args.decoder_steps, 32, args.seed)
    if args.stage in ("all", "classifier"):
        record["classifier"] = train_classifier(args.classifier_steps, 64, args.seed)
    if args.stage in ("all", "unet"):
        key = "unet_resumed" if args.resume else "unet"
        seed = args.seed + 1 if args.resume else args.seed  # fresh batches when continuing
        record[key] = train_unet(args.unet_steps, args.unet_batch, seed, args.unet_lr, args.bank_size, args.resume,
                                 args.save_every, args.eval_every, args.eval_prompts, args.high_noise_frac, args.stop_after,
                                 args.continue_run)
    if args.stage == "install-vae":
        # the decoder was fine-tuned while the UNet trained: put the final VAE in the pipeline
        from diffusers import AutoencoderKL

        AutoencoderKL.from_pretrained(WORK / "vae").save_pretrained(OUT / "vae", safe_serialization=True)
    if args.stage in ("all", "eval"):
        record["adherence"] = evaluate(None, tuple(range(args.eval_seeds)))
    if args.stage == "leak":
        record["noise_leak" + (f"_{args.tag}" if args.tag else "")] = noise_leak(tuple(range(args.eval_seeds)))
    # merge with what earlier (or concurrently run) stages recorded
    merged = json.loads(log_file.read_text()) if log_file.exists() else {}
    merged.setdefault("stage_seconds", {})[args.stage] = time.time() - started
    merged.update({k: v for k, v in record.items()})
    log_file.write_text(json.dumps(merged, indent=2))
    log(f"total {time.time() - started:.0f}s; log in {log_file}")


if __name__ == "__main__":
    main()
