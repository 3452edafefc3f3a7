"""Train the bundled "notes" MusicLDM model (vocoder, mel VAE, CLAP-conditioned UNet).

Stages (run all, or one at a time with ``--stage``; later stages read earlier outputs):

1. ``vocoder``: :class:`~sadakit.bundled.harmonic_vocoder.HarmonicVocoder` on ground-truth
   log-mels of synthesised notes: pitch head supervised with the exact f0, amplitudes through
   the oscillator bank with log-mel L1 + multi-resolution STFT loss (no GAN: clean tones).
2. ``vae``: AutoencoderKL on log-mel "images" (1, 128 frames, 64 mels) -> (8, 32, 16),
   L1 + small KL, scaling factor 1 / std of the latents.
3. ``text``: CLAP text branch pre-trained so prompts get distinct embeddings (note and
   timbre heads on the normalised embedding); the UNet stage then keeps it frozen.
4. ``unet``: UNet2DConditionModel (the CLAP embedding is its class label, as in MusicLDM),
   v-prediction on a zero-terminal-SNR schedule, 10% empty prompts for classifier-free
   guidance, EMA weights; saved as a ``MusicLDMPipeline`` (UNet stored in float16 to keep
   the package small). ``--resume`` continues from the saved UNet.
5. ``eval``: vocoder resynthesis quality, pitch (audio and mel domain) and timbre adherence
   of the saved pipeline; ``bench``: SADA vs baseline (interleaved, medians).

Everything is seeded; run times are printed and written to ``train_log.json`` in the
model directory. Usage::

    python scripts/train_notes.py --stage all --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from sadakit.bundled import data_notes as D
from sadakit.bundled import notes as N
from sadakit.bundled.training import (
    EMA,
    Checkpoint,
    LoopResult,
    Progress,
    log,
    optimizer_step,
    run_loop,
    seeded,
    v_prediction_pair,
    warmup_cosine,
)

#: Scratch directory (data banks, stage outputs) and the pipeline directory written to; both
#: set from ``--work`` / ``--out`` (the default ``--out`` is the shipped model).
WORK = Path("/tmp/notes-train")
OUT = N.MODEL_DIR
SECONDS = N.AUDIO_SECONDS
FRAMES = int(round(SECONDS * 100))
VOCODER_LOSS_FLOOR = math.log(1e-2)


def random_labels(n: int, g: torch.Generator) -> list[D.NoteLabel]:
    idx = torch.randint(len(D.NOTES) * len(D.TIMBRES), (n,), generator=g).tolist()
    return [D.NoteLabel(i // len(D.TIMBRES), i % len(D.TIMBRES)) for i in idx]


def bank(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` seeded clips: label index (note * 2 + timbre) and waveforms; cached as safetensors."""
    labels, waves, _ = bank_with_f0(n, seed)
    return labels, waves


def bank_with_f0(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`bank` plus each clip's exact fundamental (Hz); a cache without it is rebuilt
    (same seed, same clips)."""
    path = WORK / f"bank_{n}_{seed}.safetensors"
    if path.exists():
        data = load_file(str(path))
        if "f0" in data:
            return data["labels"], data["waves"], data["f0"]
    t0 = time.time()
    g = torch.Generator().manual_seed(seed)
    labels = random_labels(n, g)
    parts = [D.synthesize_with_f0(labels[i : i + 256], SECONDS, g) for i in range(0, n, 256)]
    waves, f0 = torch.cat([w for w, _ in parts]), torch.cat([f for _, f in parts])
    index = torch.tensor([l.note * len(D.TIMBRES) + l.timbre for l in labels])
    save_file({"labels": index, "waves": waves.contiguous(), "f0": f0}, str(path))
    log(f"synthesised {n} clips in {time.time() - t0:.0f}s")
    return index, waves, f0


def label_of(index: int) -> D.NoteLabel:
    return D.NoteLabel(index // len(D.TIMBRES), index % len(D.TIMBRES))


# ------------------------------------------------------------------------- vocoder


def stft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT loss: spectral convergence + L1 of log magnitudes."""
    total = pred.new_zeros(())
    for n_fft in (256, 1024, 2048):
        win = torch.hann_window(n_fft)
        sp = torch.stft(pred, n_fft, n_fft // 4, window=win, return_complex=True).abs()
        st = torch.stft(target, n_fft, n_fft // 4, window=win, return_complex=True).abs()
        sc = torch.linalg.norm(st - sp) / torch.linalg.norm(st).clamp_min(1e-7)
        # log floor 1e-2 (peaks are ~1e2): below it is silence, whose exact level does not matter
        total = total + sc + F.l1_loss(sp.clamp_min(1e-2).log(), st.clamp_min(1e-2).log())
    return total / 3


def voiced_frames(mel: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """``(B, T)`` mask of the frames whose linear mel energy is at least ``fraction`` of the
    clip's loudest: where a fundamental exists to be learned (not the silence before onset)."""
    energy = mel.exp().sum(-1)
    return (energy >= fraction * energy.amax(-1, keepdim=True)).float()


def train_vocoder(steps: int, batch: int, seed: int, crop: int) -> dict:
    """Pitch head: L1 in semitones against the synthesiser's exact f0 on voiced frames.
    Amplitude head: the oscillator bank driven by the *true* f0 (teacher forcing, so spectral
    gradients never pass through a sine's frequency, which is a notoriously bad loss surface),
    log-mel L1 + multi-resolution STFT loss against the original audio."""
    g = seeded(seed, 1)
    _, waves, f0 = bank_with_f0(2048, seed)
    mels = N.log_mel(waves)
    vocoder = N.build_vocoder()
    with torch.no_grad():
        vocoder.mean.copy_(mels.mean(dim=(0, 1)))
        vocoder.scale.copy_(mels.std(dim=(0, 1)).clamp_min(1e-3))
    vocoder.train()
    opt = torch.optim.AdamW(vocoder.parameters(), lr=2e-3, betas=(0.8, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    progress = Progress(steps)
    running: dict[str, float] = {}
    for step in range(steps):
        idx = torch.randint(len(waves), (batch,), generator=g)
        start = torch.randint(0, FRAMES - crop + 1, (batch,), generator=g)
        mel = torch.stack([mels[i, s : s + crop] for i, s in zip(idx.tolist(), start.tolist())])
        wav = torch.stack([waves[i, s * N.HOP : (s + crop) * N.HOP] for i, s in zip(idx.tolist(), start.tolist())])
        f0_pred, amplitudes = vocoder.controls(mel)
        voiced = voiced_frames(mel)
        semitones = 12 * torch.log2(f0_pred / f0[idx, None]).abs()
        f0_loss = (semitones * voiced).sum() / voiced.sum().clamp_min(1)
        pred = vocoder.synthesize(f0[idx, None].expand_as(f0_pred), amplitudes)
        mel_loss = F.l1_loss(N.log_mel(pred).clamp_min(VOCODER_LOSS_FLOOR), N.log_mel(wav).clamp_min(VOCODER_LOSS_FLOOR))
        loss = mel_loss + 2.0 * stft_loss(pred, wav) + f0_loss
        optimizer_step(loss, opt, sched, vocoder.parameters(), 5.0)
        for key, value in (("mel_l1", mel_loss.item()), ("f0_semitones", f0_loss.item())):
            running[key] = value if key not in running else 0.95 * running[key] + 0.05 * value
        if step % 50 == 0 or step == steps - 1:
            progress(step, f"vocoder step {step} mel L1 {running['mel_l1']:.4f} f0 error {running['f0_semitones']:.3f} st")
        if (step + 1) % 500 == 0 and step + 1 < steps:
            vocoder.eval()
            q = vocoder_quality(vocoder, n_per_prompt=1)
            vocoder.train()
            log(f"vocoder step {step}: resynthesis pitch {q['resynthesis_pitch']:.2f}, timbre {q['resynthesis_timbre']:.2f}, "
                f"log-mel PSNR {q['resynthesis_log_mel_psnr_db']:.1f} dB")
    vocoder.eval()
    vocoder.save_pretrained(WORK / "vocoder")
    info = {"class": "HarmonicVocoder", "steps": steps, "batch": batch, "crop_frames": crop,
            "parameters": sum(p.numel() for p in vocoder.parameters()), "seconds": progress.seconds,
            "final_mel_l1": running["mel_l1"], "final_f0_semitones": running["f0_semitones"], **vocoder_quality(vocoder)}
    log(f"vocoder done {info}")
    return info


@torch.no_grad()
def vocoder_quality(vocoder, n_per_prompt: int = 4) -> dict:
    """Resynthesise held-out ground-truth clips from their log-mels: pitch and log-mel PSNR."""
    from sadakit.metrics.audio import log_mel_psnr

    g = torch.Generator().manual_seed(4321)
    labels = [D.NoteLabel(n, t) for n in range(len(D.NOTES)) for t in range(2) for _ in range(n_per_prompt)]
    waves = D.synthesize(labels, SECONDS, g)
    out = vocoder(N.log_mel(waves))
    prompts = [l.prompt for l in labels]
    resyn = N.adherence(out, prompts)
    truth = N.adherence(waves, prompts)
    return {"resynthesis_pitch": resyn.pitch, "resynthesis_timbre": resyn.timbre,
            "resynthesis_median_abs_semitones": resyn.median_abs_semitones,
            "ground_truth_pitch": truth.pitch, "ground_truth_timbre": truth.timbre,
            "resynthesis_log_mel_psnr_db": log_mel_psnr(out, waves, N.SAMPLE_RATE), "n": len(labels)}


# ----------------------------------------------------------------------------- VAE


def train_vae(steps: int, batch: int, seed: int, crop: int) -> dict:
    g = seeded(seed, 2)
    _, waves = bank(2048, seed)
    mels = N.log_mel(waves).unsqueeze(1)  # (n, 1, frames, mels)
    vae = N.build_vae().train()
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    progress = Progress(steps)
    running = None
    for step in range(steps):
        idx = torch.randint(len(mels), (batch,), generator=g)
        s = int(torch.randint(0, (FRAMES - crop) // 4 + 1, (1,), generator=g)) * 4
        x = mels[idx, :, s : s + crop]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        l1 = F.l1_loss(rec, x)
        loss = l1 + 1e-6 * post.kl().mean()
        optimizer_step(loss, opt, sched, vae.parameters(), 5.0)
        running = l1.item() if running is None else 0.95 * running + 0.05 * l1.item()
        if step % 25 == 0 or step == steps - 1:
            progress(step, f"vae step {step} L1 {running:.4f}")
    vae.eval()
    with torch.no_grad():
        _, test = bank(256, seed + 100)
        x = N.log_mel(test).unsqueeze(1)
        z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        test_l1 = F.l1_loss(rec, x).item()
        std = float(z.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    vae.save_pretrained(WORK / "vae")
    info = {"steps": steps, "batch": batch, "crop_frames": crop, "seconds": progress.seconds,
            "heldout_l1_logmel": test_l1, "scaling_factor": 1.0 / std}
    log(f"vae done {info}")
    return info


# ------------------------------------------------------------------------- text


def train_text(steps: int, seed: int) -> dict:
    """Pre-train the CLAP text branch so that prompts get distinct embeddings.

    Why: trained only through the UNet, the pooled, L2-normalised CLAP embedding of every
    prompt stayed the same (measured: cosine similarity 0.9999996 between all 16 prompts
    after 200 joint steps), so the UNet learned an unconditional model. Two linear heads
    read the note (8 + none) and the timbre (2 + none) back from the normalised embedding
    (cross-entropy at temperature 0.1), like a CLAP-style supervised objective; the empty
    prompt is its own "none" class for classifier-free guidance.
    """
    torch.manual_seed(seed)
    tokenizer = N.build_tokenizer()
    text_encoder = N.build_text_encoder().train()
    n_classes = len(D.NOTES) * len(D.TIMBRES)
    prompts = [""] + [label_of(i).prompt for i in range(n_classes)]
    note_target = torch.tensor([len(D.NOTES)] + [label_of(i).note for i in range(n_classes)])
    timbre_target = torch.tensor([len(D.TIMBRES)] + [label_of(i).timbre for i in range(n_classes)])
    note_head = torch.nn.Linear(N.TEXT_HIDDEN, len(D.NOTES) + 1)
    timbre_head = torch.nn.Linear(N.TEXT_HIDDEN, len(D.TIMBRES) + 1)
    params = (list(text_encoder.text_model.parameters()) + list(text_encoder.text_projection.parameters())
              + list(note_head.parameters()) + list(timbre_head.parameters()))
    opt = torch.optim.AdamW(params, lr=3e-3)
    t0 = time.time()
    for step in range(steps):
        emb = N.text_embeddings(text_encoder, tokenizer, prompts) / 0.1
        loss = F.cross_entropy(note_head(emb), note_target) + F.cross_entropy(timbre_head(emb), timbre_target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"text step {step} loss {loss.item():.4f}")
    text_encoder.eval()
    with torch.no_grad():
        emb = N.text_embeddings(text_encoder, tokenizer, prompts)
        sim = (emb @ emb.T).fill_diagonal_(-1)
    text_encoder.save_pretrained(WORK / "text_encoder")
    info = {"steps": steps, "seconds": time.time() - t0, "final_loss": loss.item(),
            "max_cosine_between_prompts": sim.max().item()}
    log(f"text done {info}")
    return info


# ---------------------------------------------------------------------------- UNet


def current_vocoder():
    """The trained vocoder if its stage has finished, else an untrained one as a placeholder
    (the vocoder trains concurrently; ``--stage install-vocoder`` puts the final one in)."""
    from sadakit.bundled.harmonic_vocoder import HarmonicVocoder

    if (WORK / "vocoder" / "diffusion_pytorch_model.safetensors").exists():
        return HarmonicVocoder.from_pretrained(WORK / "vocoder").eval()
    log("vocoder not trained yet: saving a placeholder, run --stage install-vocoder later")
    return N.build_vocoder()


def train_unet(steps: int, batch: int, seed: int, lr: float, bank_size: int, save_every: int = 200,
               resume: bool = False, continue_run: bool = False) -> dict:
    """With a pre-trained text branch (``--stage text``) the text encoder is frozen and the 17
    prompt embeddings are computed once; otherwise it trains jointly. ``resume`` starts from
    the UNet saved in the model directory (e.g. one trained while conditioning was dead:
    its unconditional denoising is a good start); ``continue_run`` continues an interrupted run
    from its checkpoint in ``WORK`` (same batches as an uninterrupted run)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import ClapModel

    g = seeded(seed, 3)
    vae = AutoencoderKL.from_pretrained(WORK / "vae").eval()
    sf = vae.config.scaling_factor
    labels, waves = bank(bank_size, seed)  # the VAE's clips: cached, and no held-out need here
    t0 = time.time()
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(waves), 128):
            post = vae.encode(N.log_mel(waves[i : i + 128]).unsqueeze(1)).latent_dist
            means.append(post.mean)
            stds.append(post.std)
    means, stds = torch.cat(means), torch.cat(stds)
    del waves
    log(f"latent bank {tuple(means.shape)} in {time.time() - t0:.0f}s")

    tokenizer = N.build_tokenizer()
    frozen_text = (WORK / "text_encoder" / "model.safetensors").exists()
    text_encoder = ClapModel.from_pretrained(WORK / "text_encoder") if frozen_text else N.build_text_encoder()
    text_encoder.train(not frozen_text)
    unet = UNet2DConditionModel.from_pretrained(OUT / "unet", torch_dtype=torch.float32) if resume else N.build_unet()
    unet.train()
    log(f"text encoder {'pre-trained, frozen' if frozen_text else 'trained jointly'}; UNet {'resumed' if resume else 'new'}")
    alphas_cumprod = N.build_scheduler().alphas_cumprod
    # unique prompts: index 0 is the empty prompt (CFG's unconditional branch)
    n_classes = len(D.NOTES) * len(D.TIMBRES)
    prompts = [""] + [label_of(i).prompt for i in range(n_classes)]
    params = list(unet.parameters())
    if frozen_text:
        text_encoder.requires_grad_(False)
        with torch.no_grad():
            table = N.text_embeddings(text_encoder, tokenizer, prompts)
    else:
        params += list(text_encoder.text_model.parameters()) + list(text_encoder.text_projection.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps)
    ema = EMA(unet, text_encoder)
    ema_unet, ema_te = ema.averaged

    def loss_of_step(step: int) -> torch.Tensor:
        idx = torch.randint(len(means), (batch,), generator=g)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=g)) * sf
        cond = labels[idx] + 1
        cond[torch.rand(batch, generator=g) < 0.1] = 0
        used, inverse = torch.unique(cond, return_inverse=True)
        if frozen_text:
            emb = table[cond]
        else:
            emb = N.text_embeddings(text_encoder, tokenizer, [prompts[i] for i in used.tolist()])[inverse]
        t = torch.randint(0, 1000, (batch,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        zt, target = v_prediction_pair(z0, noise, alphas_cumprod, t)  # v-prediction: the scheduler's setting
        pred = unet(zt, t, None, class_labels=emb).sample
        return F.mse_loss(pred, target)

    def on_step_end(step: int, result: LoopResult) -> bool:
        if (step + 1) % save_every == 0 or step == steps - 1:
            save_pipeline(vae, ema_te, ema_unet, current_vocoder())
        return False

    result = run_loop(steps, loss_of_step, opt, sched, params, 1.0, ema, "unet", on_step_end=on_step_end,
                      checkpoint=Checkpoint(WORK / "unet_checkpoint.pt", save_every, continue_run),
                      modules=(unet, text_encoder), generators=(g,))
    running = result.running_loss
    info = {"steps": steps, "batch": batch, "lr": lr, "seconds": result.seconds, "final_loss_ema": running,
            "bank_size": len(means), "resumed": resume, "text_encoder_frozen": frozen_text}
    log(f"unet done {info}")
    return info


def save_pipeline(vae, text_encoder, unet, vocoder) -> None:
    """Save as a MusicLDMPipeline; the UNet goes to disk in float16 (half the bytes; it is
    loaded back as float32 by ``notes.load_pipeline``)."""
    unet16 = copy.deepcopy(unet).half()
    pipe = N.assemble_pipeline(vae, text_encoder, unet16, vocoder)
    pipe.save_pretrained(OUT, safe_serialization=True)
    log(f"saved pipeline to {OUT}")


def install_vocoder() -> None:
    """Re-save the pipeline in ``OUT`` with the vocoder from ``WORK`` (it trained after the
    UNet's last save, or it replaces an older vocoder class): the old vocoder folder is removed
    first so no stale weights stay next to the new ones."""
    import shutil

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import ClapModel

    from sadakit.bundled.harmonic_vocoder import HarmonicVocoder

    vae = AutoencoderKL.from_pretrained(OUT / "vae")
    text_encoder = ClapModel.from_pretrained(OUT / "text_encoder")
    unet = UNet2DConditionModel.from_pretrained(OUT / "unet")
    vocoder = HarmonicVocoder.from_pretrained(WORK / "vocoder")
    shutil.rmtree(OUT / "vocoder", ignore_errors=True)
    save_pipeline(vae, text_encoder, unet, vocoder)


# ---------------------------------------------------------------------------- eval


def evaluate(seeds: tuple[int, ...], guidances: tuple[float, ...]) -> dict:
    t0 = time.time()
    pipe = N.load_pipeline(OUT)
    info: dict = {"vocoder": vocoder_quality(pipe.vocoder), "steps": N.DEFAULT_STEPS, "seeds": list(seeds)}
    # VAE + vocoder round trip on ground truth: the ceiling for generated audio
    with torch.no_grad():
        labels = [l for l in range(16) for _ in range(4)]
        waves = D.synthesize([label_of(i) for i in labels], SECONDS, torch.Generator().manual_seed(999))
        vae = pipe.vae
        rec = vae.decode(vae.encode(N.log_mel(waves).unsqueeze(1)).latent_dist.mean).sample
        out = pipe.mel_spectrogram_to_waveform(rec)
        info["vae_vocoder_roundtrip"] = N.adherence(out, [label_of(i).prompt for i in labels], rec.squeeze(1)).as_dict()
    for guidance in guidances:
        res = N.evaluate(pipe, seeds=seeds, guidance_scale=guidance)
        info[f"adherence_guidance_{guidance:g}"] = res.as_dict()
        log(f"guidance {guidance}: {res}")
    info["seconds"] = time.time() - t0
    log(f"eval {info}")
    return info


def bench(repeats: int) -> dict:
    """SADA vs baseline on the 16 prompts in one batch (seed 0, default steps and guidance):
    the default config and the criterion-only one, interleaved repeats, medians."""
    import sadakit

    pipe = N.load_pipeline(OUT)
    rows = []
    for name, config in (("default", None), ("criterion_only", sadakit.SADAConfig.criterion_only())):
        row = N.compare(pipe, config, name, repeats=repeats).row()
        log(f"bench {row}")
        rows.append(row)
    info = {"repeats": repeats, "threads": torch.get_num_threads(), "rows": rows}
    (OUT / "bench_sada.json").write_text(json.dumps(info, indent=2))
    return info


def main() -> None:
    global WORK, OUT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=("all", "vocoder", "vae", "text", "unet", "install-vocoder", "eval", "bench"), default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(WORK), help="scratch directory (data banks, stage outputs)")
    ap.add_argument("--out", default=str(N.MODEL_DIR), help="pipeline directory (default: the shipped model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vocoder-steps", type=int, default=1500)
    ap.add_argument("--vocoder-batch", type=int, default=16)
    ap.add_argument("--vocoder-crop", type=int, default=64)
    ap.add_argument("--vae-steps", type=int, default=500)
    ap.add_argument("--unet-steps", type=int, default=800)
    ap.add_argument("--text-steps", type=int, default=300)
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--resume", action="store_true", help="unet stage: start from the saved UNet (fresh optimiser)")
    ap.add_argument("--continue-run", action="store_true",
                    help="unet stage: continue an interrupted run from its checkpoint in --work (same batches)")
    ap.add_argument("--unet-batch", type=int, default=32)
    ap.add_argument("--unet-lr", type=float, default=2e-3)
    ap.add_argument("--bank-size", type=int, default=2048)
    ap.add_argument("--eval-seeds", type=int, default=2)
    ap.add_argument("--bench-repeats", type=int, default=3)
    ap.add_argument("--eval-guidance", type=float, nargs="+", default=[N.DEFAULT_GUIDANCE])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    WORK, OUT = Path(args.work), Path(args.out)
    WORK.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    log_file = OUT / "train_log.json"
    record: dict = {"threads": args.threads}
    started = time.time()
    if args.stage in ("all", "vocoder"):
        record["vocoder"] = train_vocoder(args.vocoder_steps, args.vocoder_batch, args.seed, crop=args.vocoder_crop)
    if args.stage in ("all", "vae"):
        record["vae"] = train_vae(args.vae_steps, 16, args.seed, crop=64)
    if args.stage in ("all", "text"):
        record["text"] = train_text(args.text_steps, args.seed)
    if args.stage in ("all", "unet"):
        key = "unet_resumed" if args.resume else "unet"
        record[key] = train_unet(args.unet_steps, args.unet_batch, args.seed + int(args.resume), args.unet_lr,
                                 args.bank_size, save_every=args.save_every, resume=args.resume,
                                 continue_run=args.continue_run)
    if args.stage == "install-vocoder":
        # the vocoder finished after the UNet's last save: put it into the pipeline
        install_vocoder()
    if args.stage in ("all", "eval"):
        record["eval"] = evaluate(tuple(range(args.eval_seeds)), tuple(args.eval_guidance))
    if args.stage == "bench":
        record["bench"] = bench(args.bench_repeats)
    merged = json.loads(log_file.read_text()) if log_file.exists() else {}
    merged.setdefault("stage_seconds", {})[args.stage] = time.time() - started
    merged.update(record)
    log_file.write_text(json.dumps(merged, indent=2))
    log(f"total {time.time() - started:.0f}s; log in {log_file}")


if __name__ == "__main__":
    main()
