"""Train the bundled "moving-shapes" Wan model (AutoencoderKLWan + UMT5 + WanTransformer3DModel).

Stages (``--stage``), each seeded from ``--seed`` with its own data stream:

0. ``judge``: the judge's frame classifier (shape, colour), trained only on frames of the data
   with blur, noise and brightness augmentation, independently of the generator; then the
   whole judge (classifier + centre-of-mass direction) validated on held-out ground-truth clips.
   Saved to ``models/moving-shapes-judge``.
1. ``vae``: the causal 3-D VAE on clips of :mod:`sadakit.bundled.data_moving_shapes` (MSE + L1
   reconstruction, a tiny KL), then the latents' per-channel mean and std written into its
   config (``latents_mean`` / ``latents_std``, which ``WanPipeline`` undoes before decoding), and
   its reconstruction PSNR on held-out clips (and the judge on them). Saved to ``--work``/vae.
   ``decoder``: optionally, the decoder sharpened with the encoder frozen (latents unchanged, so
   it may run before or beside the transformer stage; copy ``--work``/vae into the pipeline after).
   ``check-vae``: the reconstruction check alone (the VAE in ``--work``, the shipped judge).
2. ``transformer``: the Wan transformer and the UMT5 text encoder trained jointly with the
   flow-matching objective (velocity ``eps - x0``, timestep ``1000 sigma`` as UniPC's flow
   sigmas give it) on the VAE's normalised latents, 10% empty prompts for classifier-free
   guidance, a fraction of noise levels from the noisiest 15% (where only the prompt tells the
   direction), EMA weights saved as a ``WanPipeline``. A full checkpoint is written to
   ``--work`` every ``--checkpoint-every`` steps; ``--resume`` continues the same run.
   Variants (docs/bundled_models.md, none beat the shipped model): ``--layers/--heads/--ffn-dim``
   (transformer size), ``--sigma-sampling logit-normal`` (base noise levels), ``--paired-shapes``
   (batches of clip pairs that differ only in the shape), ``--init-from`` (start from a pipeline),
   ``--tokenizer words`` (the data's words as single pieces instead of one piece per character),
   ``--latent-channels`` (VAE latent channels = transformer in/out; give the same to the vae stage).
3. ``install-vae``: after ``decoder``, its VAE (same encoder, sharper decoder) into the pipeline.
4. ``eval``: prompt adherence of the saved pipeline (48 prompts x ``--eval-seeds``) at the
   default steps, judged by :mod:`sadakit.bundled.moving_shapes.judging`.

Run times are logged and written to ``train_log.json`` in the model directory. Usage::

    OMP_NUM_THREADS=1 python scripts/train_moving_shapes.py --stage judge --threads 1
    OMP_NUM_THREADS=1 python scripts/train_moving_shapes.py --stage vae --threads 1
    OMP_NUM_THREADS=1 python scripts/train_moving_shapes.py --stage decoder --threads 1   # beside the next one
    OMP_NUM_THREADS=1 python scripts/train_moving_shapes.py --stage transformer --threads 1
    OMP_NUM_THREADS=1 python scripts/train_moving_shapes.py --stage install-vae
    OMP_NUM_THREADS=1 python scripts/train_moving_shapes.py --stage eval --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan

from sadakit.bundled import data_moving_shapes as data
import sadakit.bundled.moving_shapes.model as M
from sadakit.bundled.training import (
    EMA,
    SIGMA_SAMPLINGS,
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

WORK = Path("/tmp/moving-shapes-train")
#: ``--latent-target`` choices: the transformer's clean latent is a posterior sample drawn per step
#: ("sample") or the posterior mean ("mean"). The VAE's posterior std is several times the
#: square-circle difference of its means (norm 12-14 vs 2.6-4.5 per latent frame, measured on
#: the shipped VAE), so samples bury the outline.
LATENT_TARGETS: tuple[str, ...] = ("sample", "mean")
OUT = M.MODEL_DIR


def to_vae(clips: torch.Tensor) -> torch.Tensor:
    """``(n, frames, 3, H, W)`` clips in [0, 1] -> the VAE's ``(n, 3, frames, H, W)`` in [-1, 1]."""
    return clips.permute(0, 2, 1, 3, 4) * 2 - 1


def psnr(test: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB of clips in [0, 1]."""
    return float(10 * torch.log10(1 / F.mse_loss(test.clamp(0, 1), ref)))


def augment(frames: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random resolution loss (half the frames drawn at 16, 12 or 10 px and scaled back up, which
    rounds corners), box blur (3 or 5 px), noise and brightness shifts: generated frames are softer
    and noisier than drawn ones, and the judge must read them the same way."""
    n, size = frames.shape[0], frames.shape[-1]
    low = int(torch.tensor([16, 12, 10])[torch.randint(3, (1,), generator=g)])
    coarse = F.interpolate(F.adaptive_avg_pool2d(frames, low), size=size, mode="bilinear", align_corners=False)
    frames = torch.where(torch.rand(n, 1, 1, 1, generator=g) < 0.5, coarse, frames)
    blur3 = F.avg_pool2d(F.pad(frames, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    blur5 = F.avg_pool2d(F.pad(frames, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    pick = torch.rand(n, 1, 1, 1, generator=g)
    mix = torch.rand(n, 1, 1, 1, generator=g)
    blurred = torch.where(pick < 0.5, blur3, blur5)
    out = torch.where(pick < 0.8, mix * blurred + (1 - mix) * frames, frames)
    out = out + 0.06 * torch.rand(n, 1, 1, 1, generator=g) * torch.randn(out.shape, generator=g)
    return (out + 0.05 * (2 * torch.rand(n, 1, 1, 1, generator=g) - 1)).clamp(0, 1)


def judge_validation(clips: torch.Tensor, labels: torch.Tensor, classifier) -> dict:
    """Accuracy of the whole judge (classifier + direction DSP) on clips with known labels."""
    from sadakit.bundled.moving_shapes import judging

    hits = judging.judge_clips(clips, classifier) == labels
    return {"n": len(labels), "all": hits.all(dim=1).float().mean().item(),
            **{k: hits[:, i].float().mean().item() for i, k in enumerate(("shape", "colour", "direction"))}}


def train_judge(steps: int, batch: int, seed: int, heldout: int) -> dict:
    from safetensors.torch import save_file

    from sadakit.bundled.moving_shapes import judging

    g = seeded(seed, 0)
    model = judging.FrameClassifier().train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    sched = warmup_cosine(opt, steps)

    def loss_of_step(step: int) -> torch.Tensor:
        labels, clips = data.sample_batch(batch // 4, g)
        frames = clips[:, torch.randperm(data.NUM_FRAMES, generator=g)[:4]].flatten(0, 1)  # 4 frames a clip
        logits = model(augment(frames, g))
        per_frame = labels.repeat_interleave(4, dim=0)
        return F.cross_entropy(logits["shape"], per_frame[:, 0]) + F.cross_entropy(logits["colour"], per_frame[:, 1])

    result = run_loop(steps, loss_of_step, opt, sched, label="judge", log_every=100)
    model.eval()
    labels, clips = data.sample_batch(heldout, torch.Generator().manual_seed(seed + 1_000_003))
    validation = judge_validation(clips, labels, model)
    out = judging.CLASSIFIER_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    (out.parent / "config.json").write_text(json.dumps({"width": model.width, "frame_size": data.FRAME_SIZE}, indent=2))
    info = {"steps": steps, "batch": batch, "seconds": result.seconds, "final_loss_ema": result.running_loss,
            "parameters": sum(p.numel() for p in model.parameters()), "heldout_clips": validation}
    (out.parent / "train_log.json").write_text(json.dumps(info, indent=2))
    log(f"judge done {info}")
    return info


def check_judge(seed: int, heldout: int) -> dict:
    """The shipped judge on fresh held-out clips of the current data (e.g. after the data's range changed),
    recorded beside its training log."""
    from sadakit.bundled.moving_shapes import judging

    labels, clips = data.sample_batch(heldout, torch.Generator().manual_seed(seed + 2_000_003))
    info = {**judge_validation(clips, labels, judging.load_classifier()), "across_range": list(data.ACROSS_RANGE)}
    log_path = judging.CLASSIFIER_FILE.parent / "train_log.json"
    judge_log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    judge_log["heldout_check"] = info
    log_path.write_text(json.dumps(judge_log, indent=2))
    log(f"judge on {heldout} fresh held-out clips: {info}")
    return info


def train_vae(steps: int, batch: int, seed: int, lr: float, checkpoint_every: int, resume: bool,
              latent_channels: int = M.LATENT_CHANNELS) -> dict:
    g = seeded(seed, 10)
    vae = M.build_vae(latent_channels=latent_channels).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps)

    def loss_of_step(step: int) -> torch.Tensor:
        _, clips = data.sample_batch(batch, g)
        x = to_vae(clips)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        # L1 beside MSE keeps corners sharp (MSE alone rounds squares into circles, as in shapes-sd)
        return F.mse_loss(rec, x) + F.l1_loss(rec, x) + 1e-6 * post.kl().mean()

    result = run_loop(steps, loss_of_step, opt, sched, vae.parameters(), 1.0, label="vae",
                      checkpoint=Checkpoint(WORK / "vae_checkpoint.pt", checkpoint_every, resume),
                      modules=(vae,), generators=(g,))
    vae.eval()
    with torch.no_grad():
        _, clips = data.sample_batch(256, torch.Generator().manual_seed(seed + 1))
        means = torch.cat([vae.encode(to_vae(c)).latent_dist.mean for c in clips.split(32)])
    vae.register_to_config(latents_mean=means.mean(dim=(0, 2, 3, 4)).tolist(),
                           latents_std=means.std(dim=(0, 2, 3, 4)).tolist())
    vae.save_pretrained(WORK / "vae")
    info = {"steps": steps, "batch": batch, "lr": lr, "seconds": result.seconds, "final_loss_ema": result.running_loss,
            "parameters": sum(p.numel() for p in vae.parameters()), "resumed_at_step": result.first_step or None,
            "latent_channels": latent_channels, **reconstruction_check(vae, seed)}
    log(f"vae done {info}")
    return info


def reconstruction_check(vae: AutoencoderKLWan, seed: int, n: int = 256) -> dict:
    """PSNR of the VAE's reconstructions (posterior mean) of ``n`` held-out clips, and the judge on
    them: a VAE the judge cannot read through caps every generation's adherence."""
    with torch.no_grad():
        labels, clips = data.sample_batch(n, torch.Generator().manual_seed(seed + 1))
        rec = torch.cat([vae.decode(vae.encode(to_vae(c)).latent_dist.mean).sample for c in clips.split(32)])
    rec_clips = (rec.permute(0, 2, 1, 3, 4) + 1) / 2
    info = {"heldout_clips": n, "heldout_psnr_db": psnr(rec_clips, clips)}
    from sadakit.bundled.moving_shapes import judging

    if judging.CLASSIFIER_FILE.is_file():
        info["judge_on_reconstructed"] = judge_validation(rec_clips.clamp(0, 1), labels, judging.load_classifier())
    log(f"reconstruction of {n} held-out clips: {info}")
    return info


def finetune_decoder(steps: int, batch: int, seed: int, lr: float, checkpoint_every: int, resume: bool,
                     latent_noise: float = 0.0) -> dict:
    """Sharpen the decoder with the encoder frozen. Latents (and their stored mean and std) do not
    change, so the transformer can be trained on the encoder's latents before or while this runs.
    ``latent_noise`` > 0: each clip's latent gets Gaussian noise of std ``U(0, latent_noise)`` (in
    units of the latents' stored std), so the decoder learns to draw a clean outline from a latent a
    generator got slightly wrong."""
    g = seeded(seed, 30)
    vae = load_trained_vae()
    vae.decoder.train()
    latent_std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    for p in list(vae.encoder.parameters()) + list(vae.quant_conv.parameters()):
        p.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps)

    def loss_of_step(step: int) -> torch.Tensor:
        _, clips = data.sample_batch(batch, g)
        x = to_vae(clips)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=g)
            if latent_noise:
                level = latent_noise * torch.rand(len(z), 1, 1, 1, 1, generator=g)
                z = z + level * latent_std * torch.randn(z.shape, generator=g)
        rec = vae.decode(z).sample
        return F.mse_loss(rec, x) + F.l1_loss(rec, x)

    result = run_loop(steps, loss_of_step, opt, sched, params, 1.0, label="decoder",
                      checkpoint=Checkpoint(WORK / "decoder_checkpoint.pt", checkpoint_every, resume),
                      modules=(vae,), generators=(g,))
    vae.eval()
    vae.save_pretrained(WORK / "vae")
    info = {"steps": steps, "batch": batch, "lr": lr, "seconds": result.seconds, "final_loss_ema": result.running_loss,
            "latent_noise": latent_noise, "resumed_at_step": result.first_step or None, **reconstruction_check(vae, seed)}
    log(f"decoder done {info}")
    return info


def load_trained_vae() -> AutoencoderKLWan:
    if not (WORK / "vae" / "config.json").is_file():
        raise FileNotFoundError(f"no trained VAE in {WORK / 'vae'}: run --stage vae first")
    return AutoencoderKLWan.from_pretrained(WORK / "vae", local_files_only=True).eval()


class TextConditioning:
    """The UMT5 encoder on the training prompts exactly as ``WanPipeline`` feeds it (attention
    mask, positions past the prompt's length zeroed, padded to ``max_sequence_length``), with
    gradients."""

    def __init__(self, text_encoder, tokenizer: str = "chars") -> None:
        self.text_encoder = text_encoder
        tokens = M.build_tokenizer(tokenizer)(data.conditioning_prompts(), padding="max_length",
                                     max_length=M.TOKENIZER_MAX_LENGTH, truncation=True, return_tensors="pt")
        self.ids, self.mask = tokens.input_ids, tokens.attention_mask

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        """``(n, 32, 64)`` embeddings of the prompts ``index`` (0 = empty)."""
        used, inverse = torch.unique(index, return_inverse=True)  # encode each prompt once per batch
        mask = self.mask[used]
        hidden = self.text_encoder(self.ids[used], mask).last_hidden_state * mask.unsqueeze(-1)
        return hidden[inverse]


def train_transformer(steps: int, batch: int, seed: int, lr: float, bank_size: int, high_noise_frac: float,
                      save_every: int, eval_every: int, eval_prompts: int, checkpoint_every: int,
                      resume: bool, init_from: Path | None = None, sigma_sampling: str = "uniform",
                      size: tuple[int, int, int] = (M.TRANSFORMER_LAYERS, M.TRANSFORMER_HEADS, M.TRANSFORMER_FFN),
                      paired_shapes: bool = False, tokenizer: str = "chars",
                      latent_channels: int = M.LATENT_CHANNELS, latent_target: str = "sample",
                      pair_contrast: float = 0.0) -> dict:
    g = seeded(seed, 20)
    vae = load_trained_vae()
    if vae.config.z_dim != latent_channels:
        raise SystemExit(f"the VAE in {WORK / 'vae'} has {vae.config.z_dim} latent channels, not "
                         f"--latent-channels {latent_channels}")
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    t0 = time.time()
    shapes = len(data.SHAPES)
    sample = ((lambda n: data.sample_shape_groups(n // shapes, g)) if paired_shapes
              else (lambda n: data.sample_batch(n, g)))
    labels, means, stds = encode_latent_bank(lambda x: vae.encode(to_vae(x)).latent_dist, sample, bank_size,
                                             chunk=32 * shapes if paired_shapes else 128)
    label_index = data.conditioning_index(labels)
    log(f"latent bank {tuple(means.shape)} in {time.time() - t0:.0f}s")

    transformer = M.build_transformer(*size, latent_channels=latent_channels).train()
    text_encoder = M.build_text_encoder(tokenizer).train()
    if init_from is not None:  # a second run on a saved pipeline's weights (its own schedule, EMA from them)
        from safetensors.torch import load_file

        transformer.load_state_dict(load_file(str(init_from / "transformer" / "diffusion_pytorch_model.safetensors")))
        text_encoder.load_state_dict(load_file(str(init_from / "text_encoder" / "model.safetensors")), strict=False)
        log(f"transformer and text encoder initialised from {init_from}")
    text = TextConditioning(text_encoder, tokenizer)
    modules = (transformer, text_encoder)
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps)
    ema = EMA(*modules)

    def pick(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bank indices of a batch, its dropped-prompt mask, its noise levels. Paired: ``n / 2``
        clip groups, two different shapes of each, one noise level and one prompt drop a pair."""
        if not paired_shapes:
            return (torch.randint(len(means), (n,), generator=g), torch.rand(n, generator=g) < 0.1,
                    sample_sigmas(n, high_noise_frac, g, base=sigma_sampling))
        groups = torch.randint(len(means) // shapes, (n // 2,), generator=g)
        two = torch.rand(n // 2, shapes, generator=g).argsort(dim=1)[:, :2]
        idx = (groups.view(-1, 1) * shapes + two).flatten()
        drop = (torch.rand(n // 2, generator=g) < 0.1).repeat_interleave(2)
        return idx, drop, sample_sigmas(n // 2, high_noise_frac, g, base=sigma_sampling).repeat_interleave(2)

    def loss_of_step(step: int) -> torch.Tensor:
        idx, drop, sigmas = pick(batch)
        z0 = means[idx] if latent_target == "mean" else means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=g)
        z0 = (z0 - mean) / std
        cond = label_index[idx].clone()
        cond[drop] = 0
        noise = torch.randn(z0.shape, generator=g)
        if paired_shapes:  # the same noise for both clips of a pair: only the outline and the word differ
            noise = noise[::2].repeat_interleave(2, dim=0)
        zt, target = flow_matching_pair(z0, noise, sigmas)
        pred = transformer(hidden_states=zt, timestep=sigmas * 1000, encoder_hidden_states=text(cond),
                           return_dict=False)[0]
        loss = F.mse_loss(pred, target)
        if pair_contrast:  # the part of the error that differs between a pair's two shapes, weighted up
            loss = loss + pair_contrast * F.mse_loss(pred[0::2] - pred[1::2], target[0::2] - target[1::2])
        return loss

    def on_step_end(step: int, result: LoopResult) -> bool:
        last = step == steps - 1
        if (step + 1) % save_every == 0 or last:
            save_pipeline(vae, *ema.averaged, tokenizer=tokenizer)
        if eval_every and ((step + 1) % eval_every == 0 or last):
            from sadakit.bundled.moving_shapes import judging

            t_eval = time.time()
            pipe = M.assemble_pipeline(vae, ema.averaged[1], ema.averaged[0], tokenizer)
            pipe.set_progress_bar_config(disable=True)
            res = judging.evaluate(pipe, n_prompts=eval_prompts, seeds=(0,))
            result.history.append({"step": step + 1, "seconds": result.seconds, **res.as_dict()})
            log(f"transformer step {step + 1} adherence {res.as_dict()} ({time.time() - t_eval:.0f}s)")
        return False

    result = run_loop(steps, loss_of_step, opt, sched, params, 1.0, ema, "transformer", on_step_end=on_step_end,
                      checkpoint=Checkpoint(WORK / "checkpoint.pt", checkpoint_every, resume),
                      modules=modules, generators=(g,))
    info = {"steps": steps, "batch": batch, "lr": lr, "seconds": result.seconds, "final_loss_ema": result.running_loss,
            "bank_size": len(means), "high_noise_frac": high_noise_frac, "sigma_sampling": sigma_sampling, "paired_shapes": paired_shapes, "tokenizer": tokenizer,
            "latent_target": latent_target, "pair_contrast": pair_contrast, "across_range": list(data.ACROSS_RANGE),
            "transformer_size": {"layers": size[0], "heads": size[1], "ffn_dim": size[2]},
            "latent_channels": latent_channels, "resumed_at_step": result.first_step or None,
            "initialised_from": str(init_from) if init_from is not None else None,
            "transformer_parameters": sum(p.numel() for p in transformer.parameters()),
            "text_encoder_parameters": sum(p.numel() for p in text_encoder.parameters()),
            "objective": "flow matching (velocity eps - x0)", "adherence_curve": result.history}
    log(f"transformer done {info}")
    return info


def save_pipeline(vae, transformer, text_encoder, tokenizer: str = "chars") -> None:
    pipe = M.assemble_pipeline(vae, text_encoder, transformer, tokenizer)
    pipe.save_pretrained(OUT, safe_serialization=True)
    drop_local_paths(OUT)
    log(f"saved pipeline to {OUT}")


def install_vae() -> dict:
    """Put the VAE in ``--work`` (after ``--stage decoder``) into the saved pipeline: its encoder
    and latent statistics are the ones the transformer was trained on, only the decoder differs."""
    vae = load_trained_vae()
    pipe_vae = AutoencoderKLWan.from_pretrained(OUT / "vae", local_files_only=True)
    encoder_same = all(torch.equal(a, b) for a, b in zip(vae.encoder.state_dict().values(),
                                                         pipe_vae.encoder.state_dict().values()))
    if not encoder_same or list(vae.config.latents_mean) != list(pipe_vae.config.latents_mean):
        raise SystemExit(f"the VAE in {WORK / 'vae'} has another encoder than the pipeline's: the transformer was "
                         "trained on the pipeline's latents, so only a decoder fine-tune may replace it")
    vae.save_pretrained(OUT / "vae", safe_serialization=True)
    drop_local_paths(OUT)
    log(f"installed {WORK / 'vae'} into {OUT / 'vae'}")
    return {"source": str(WORK / "vae")}


def evaluate(seeds: tuple[int, ...], guidances: tuple[float, ...], steps: int) -> dict:
    from sadakit.bundled.moving_shapes import judging

    t0 = time.time()
    pipe = M.load_pipeline(OUT)
    info: dict = {"steps": steps, "seeds": list(seeds)}
    for guidance in guidances:
        res = judging.evaluate(pipe, n_prompts=None, seeds=seeds, num_inference_steps=steps, guidance_scale=guidance)
        info[f"guidance_{guidance:g}"] = res.as_dict()
        log(f"adherence at {steps} steps, guidance {guidance:g}: {res.as_dict()}")
    info["seconds"] = time.time() - t0
    return info


def main() -> None:
    global WORK, OUT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", required=True, choices=("judge", "check-judge", "vae", "decoder", "check-vae",
                                                       "transformer", "install-vae", "eval"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(WORK), help="scratch directory (trained VAE, resumable checkpoints)")
    ap.add_argument("--out", default=str(M.MODEL_DIR), help="pipeline directory (default: the shipped model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--judge-steps", type=int, default=1500)
    ap.add_argument("--judge-batch", type=int, default=64, help="frames per step (4 from each clip)")
    ap.add_argument("--judge-heldout", type=int, default=1000, help="held-out ground-truth clips the judge is validated on")
    ap.add_argument("--vae-steps", type=int, default=1000)
    ap.add_argument("--vae-batch", type=int, default=8)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--decoder-steps", type=int, default=700)
    ap.add_argument("--decoder-batch", type=int, default=8)
    ap.add_argument("--decoder-lr", type=float, default=1e-3)
    ap.add_argument("--decoder-latent-noise", type=float, default=0.0,
                    help="decoder stage: Gaussian noise of std up to this (in latent stds) on its input latents")
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--bank-size", type=int, default=6144)
    ap.add_argument("--high-noise-frac", type=float, default=0.25,
                    help="fraction of noise levels drawn from sigma >= 0.85, where only the prompt tells direction")
    ap.add_argument("--sigma-sampling", choices=SIGMA_SAMPLINGS, default="uniform",
                    help="base noise-level distribution (logit-normal weights the middle levels)")
    ap.add_argument("--paired-shapes", action="store_true",
                    help="batches of clip pairs that differ only in the shape (same path, colour, noise, noise level)")
    ap.add_argument("--tokenizer", choices=M.TOKENIZERS, default="chars",
                    help="text pieces: one per character (the shipped model) or the data's words whole")
    ap.add_argument("--latent-channels", type=int, default=M.LATENT_CHANNELS,
                    help="VAE latent channels = transformer in/out channels (vae and transformer stages)")
    ap.add_argument("--latent-target", choices=LATENT_TARGETS, default="mean",
                    help="what the transformer learns to generate: a fresh posterior sample of the VAE per step, "
                         "or the posterior mean (what Wan's own VAE encode returns)")
    ap.add_argument("--pair-contrast", type=float, default=0.0,
                    help="with --paired-shapes: weight of the loss on the difference of a pair's predictions "
                         "(the error that tells one shape from the other), added to the plain loss")
    ap.add_argument("--across-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="every stage: clips whose coordinate across the motion lies in "
                         f"[LO, HI] of the side (data default {data.ACROSS_RANGE})")
    ap.add_argument("--layers", type=int, default=M.TRANSFORMER_LAYERS, help="transformer blocks")
    ap.add_argument("--heads", type=int, default=M.TRANSFORMER_HEADS, help="attention heads of 32")
    ap.add_argument("--ffn-dim", type=int, default=M.TRANSFORMER_FFN, help="feed-forward width")
    ap.add_argument("--save-every", type=int, default=500, help="save the EMA pipeline every N steps")
    ap.add_argument("--checkpoint-every", type=int, default=250, help="write the resumable checkpoint every N steps")
    ap.add_argument("--init-from", default=None,
                    help="a saved pipeline directory whose transformer and text encoder start this transformer run")
    ap.add_argument("--resume", action="store_true", help="continue the stage's run from its checkpoint in --work")
    ap.add_argument("--eval-every", type=int, default=600,
                    help="adherence of the EMA weights on --eval-prompts prompts every N steps (0: off)")
    ap.add_argument("--eval-prompts", type=int, default=16)
    ap.add_argument("--eval-seeds", type=int, default=2)
    ap.add_argument("--eval-steps", type=int, default=M.DEFAULT_STEPS)
    ap.add_argument("--eval-guidance", type=float, nargs="+", default=[M.DEFAULT_GUIDANCE])
    args = ap.parse_args()
    chunk = 32 * len(data.SHAPES) if args.paired_shapes else 128
    if args.bank_size < chunk or args.bank_size % chunk:
        ap.error(f"--bank-size must be a positive multiple of {chunk} (clips are encoded {chunk} at a time), "
                 f"got {args.bank_size}")
    if args.paired_shapes and args.batch % 2:
        ap.error(f"--paired-shapes needs an even --batch, got {args.batch}")
    if args.pair_contrast and not args.paired_shapes:
        ap.error("--pair-contrast weighs the difference within shape pairs: it needs --paired-shapes")
    if args.pair_contrast < 0:
        ap.error(f"--pair-contrast must be >= 0, got {args.pair_contrast}")
    if args.across_range is not None:
        lo, hi = args.across_range
        if not 0.0 <= lo < hi <= 1.0:
            ap.error(f"--across-range needs 0 <= LO < HI <= 1 (fractions of the side), got {lo} {hi}")
        data.ACROSS_RANGE = tuple(args.across_range)
    torch.set_num_threads(args.threads)
    WORK, OUT = Path(args.work), Path(args.out)
    WORK.mkdir(parents=True, exist_ok=True)
    record: dict = {"threads": args.threads}
    started = time.time()
    if args.stage == "judge":
        record = {"judge": train_judge(args.judge_steps, args.judge_batch, args.seed, args.judge_heldout)}
        log_file = WORK / "judge_log.json"
    elif args.stage == "check-judge":
        record = {"judge_check": check_judge(args.seed, args.judge_heldout)}
        log_file = WORK / "judge_log.json"
    elif args.stage == "vae":
        record["vae"] = train_vae(args.vae_steps, args.vae_batch, args.seed, args.vae_lr, args.checkpoint_every,
                                  args.resume, args.latent_channels)
        log_file = WORK / "vae_log.json"  # the pipeline directory exists only after the transformer stage
    elif args.stage == "check-vae":  # e.g. after the judge changed: the shipped judge on the VAE's reconstructions
        record["vae_check"] = reconstruction_check(load_trained_vae(), args.seed)
        log_file = WORK / "vae_log.json"
    elif args.stage == "decoder":
        record["decoder"] = finetune_decoder(args.decoder_steps, args.decoder_batch, args.seed, args.decoder_lr,
                                             args.checkpoint_every, args.resume, args.decoder_latent_noise)
        log_file = WORK / "vae_log.json"
    else:
        OUT.mkdir(parents=True, exist_ok=True)
        log_file = OUT / "train_log.json"
        for earlier in ("judge_log.json", "vae_log.json"):  # the judge, VAE and decoder stages' records
            if (WORK / earlier).is_file():
                record.update(json.loads((WORK / earlier).read_text()))
        if args.stage == "transformer":
            record["transformer"] = train_transformer(
                args.steps, args.batch, args.seed, args.lr, args.bank_size, args.high_noise_frac, args.save_every,
                args.eval_every, args.eval_prompts, args.checkpoint_every, args.resume,
                Path(args.init_from) if args.init_from else None, args.sigma_sampling,
                (args.layers, args.heads, args.ffn_dim), args.paired_shapes, args.tokenizer,
                args.latent_channels, args.latent_target, args.pair_contrast)
        elif args.stage == "install-vae":
            record["installed_vae"] = install_vae()
        else:
            record["adherence"] = evaluate(tuple(range(args.eval_seeds)), tuple(args.eval_guidance), args.eval_steps)
    merged = json.loads(log_file.read_text()) if log_file.exists() else {}
    stage_seconds = merged.setdefault("stage_seconds", {})
    stage_seconds.update(record.pop("stage_seconds", {}))
    stage_seconds[args.stage] = time.time() - started
    merged.update(record)
    log_file.write_text(json.dumps(merged, indent=2))
    log(f"total {time.time() - started:.0f}s; log in {log_file}")


if __name__ == "__main__":
    main()
