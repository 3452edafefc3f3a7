"""The moving-shapes model's judge: shape and colour by a frame classifier, direction by DSP.

Independent of the generator: the classifier is trained (``scripts/train_moving_shapes.py
--stage judge``) only on frames drawn by :mod:`sadakit.bundled.data_moving_shapes`, never on
a model's output, and the direction is measured, not learned: the shape's centre of mass
(pixels away from the background colour) is tracked over the frames and the line fitted to it
says where it went. Why a new classifier: the shipped shapes classifier reads position from
the layout of its features, and a shape that travels across the frame leaves the four
quadrants it knows (it names the shape of 32% of moving frames right); this one pools over
space, so it reads a shape wherever it is. Evaluation code: the model (:mod:`.model`) does
not need it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from sadakit.bundled import data_moving_shapes as data
from sadakit.bundled._files import MODELS_DIR, BundledModelError, load_safetensors_checked

from . import model as clip_model

CLASSIFIER_FILE = MODELS_DIR / "moving-shapes-judge" / "model.safetensors"

#: A pixel is foreground once its RGB distance from the background exceeds this (the palette's
#: nearest colour, yellow, is 0.86 away; VAE and sampling haze stays below 0.1).
FOREGROUND_FROM = 0.15
FOREGROUND_FULL = 0.35
#: Net travel (fitted over the clip, as a fraction of the side) below which the shape "did not move".
MIN_TRAVEL = 0.15
NO_DIRECTION = -1


class FrameClassifier(nn.Module):
    """Small CNN with a shape and a colour head over globally pooled features (mean and max),
    so the answer does not depend on where in the frame the shape is."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.width = width
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.GELU(),  # 16
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1, stride=2), nn.GELU(),  # 8
            nn.Conv2d(4 * width, 4 * width, 3, padding=1), nn.GELU(),
        )
        self.heads = nn.ModuleDict({"shape": nn.Linear(8 * width, len(data.SHAPES)),
                                    "colour": nn.Linear(8 * width, len(data.COLOURS))})

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute for ``(n, 3, H, W)`` frames in [0, 1]."""
        h = self.features(frames * 2 - 1)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return {name: head(pooled) for name, head in self.heads.items()}


def load_classifier(path: Path | str | None = None) -> FrameClassifier:
    """The shipped frame classifier (``models/moving-shapes-judge``), in eval mode."""
    weights = Path(path) if path is not None else CLASSIFIER_FILE
    config_file = weights.parent / "config.json"
    if not config_file.is_file():
        raise BundledModelError(f"bundled judge config is missing: {config_file}")
    try:
        width = int(json.loads(config_file.read_text())["width"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BundledModelError(f"bundled judge config is corrupted: {config_file} ({exc})") from exc
    model = FrameClassifier(width)
    try:
        model.load_state_dict(load_safetensors_checked(weights))
    except RuntimeError as exc:
        raise BundledModelError(f"bundled judge weights do not match the architecture: {weights} ({exc})") from exc
    return model.eval()


def centre_track(clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre of mass ``(n, frames, 2)`` (x, y in pixels) of each frame's foreground, and the
    foreground mass ``(n, frames)`` (0 where a frame shows no shape)."""
    background = torch.tensor(data.BACKGROUND_RGB).view(1, 1, 3, 1, 1)
    distance = (clips - background).norm(dim=2)  # (n, f, H, W)
    weight = ((distance - FOREGROUND_FROM) / (FOREGROUND_FULL - FOREGROUND_FROM)).clamp(0, 1)
    mass = weight.sum(dim=(2, 3))
    h, w = clips.shape[-2:]
    ys = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w) + 0.5
    safe = mass.clamp(min=1e-6)
    centre = torch.stack([(weight * xs).sum(dim=(2, 3)) / safe, (weight * ys).sum(dim=(2, 3)) / safe], dim=-1)
    return centre, mass


def directions(clips: torch.Tensor) -> torch.Tensor:
    """``(n,)`` direction index of each ``(n, frames, 3, H, W)`` clip: the least-squares velocity
    of its centre track (frames without a shape left out), :data:`NO_DIRECTION` if the shape
    travels less than :data:`MIN_TRAVEL` of the side or shows in fewer than 2 frames."""
    centre, mass = centre_track(clips)
    n, frames = mass.shape
    seen = (mass > 4.0).float()  # at least ~4 px of foreground
    t = torch.arange(frames, dtype=torch.float32).view(1, frames)
    count = seen.sum(dim=1).clamp(min=1)
    t_mean = (seen * t).sum(dim=1, keepdim=True) / count.view(n, 1)
    c_mean = (seen.unsqueeze(-1) * centre).sum(dim=1, keepdim=True) / count.view(n, 1, 1)
    dt = (t - t_mean) * seen
    velocity = (dt.unsqueeze(-1) * (centre - c_mean)).sum(dim=1) / (dt**2).sum(dim=1).clamp(min=1e-6).unsqueeze(-1)
    travel = velocity.norm(dim=-1) * (frames - 1) / clips.shape[-1]
    vectors = torch.tensor(data.DIRECTION_VECTORS)  # (4, 2)
    best = (velocity @ vectors.T).argmax(dim=1)
    moved = (travel >= MIN_TRAVEL) & (seen.sum(dim=1) >= 2)
    return torch.where(moved, best, torch.full_like(best, NO_DIRECTION))


@torch.no_grad()
def judge_clips(clips: torch.Tensor, classifier: FrameClassifier | None = None) -> torch.Tensor:
    """``(n, 3)`` (shape, colour, direction) read from ``(n, frames, 3, H, W)`` clips in [0, 1]:
    shape and colour from the classifier's log-probabilities summed over frames."""
    classifier = classifier if classifier is not None else load_classifier()
    n, frames = clips.shape[:2]
    logits = classifier(clips.flatten(0, 1).float())
    votes = [logits[k].log_softmax(-1).view(n, frames, -1).sum(dim=1).argmax(-1) for k in ("shape", "colour")]
    return torch.stack([*votes, directions(clips.float())], dim=1)


@dataclass(frozen=True)
class AdherenceResult:
    """Fraction of generated clips whose judged attributes match the prompt."""

    n: int
    all_correct: float
    shape: float
    colour: float
    direction: float

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "all": self.all_correct, "shape": self.shape, "colour": self.colour,
                "direction": self.direction}


def adherence(clips: torch.Tensor, prompts: list[str], classifier: FrameClassifier | None = None) -> AdherenceResult:
    """Judge ``clips`` and compare with what ``prompts`` asked for."""
    target = torch.tensor([[l.shape, l.colour, l.direction] for l in map(data.parse_prompt, prompts)])
    hits = judge_clips(clips, classifier) == target
    return AdherenceResult(n=len(prompts), all_correct=hits.all(dim=1).float().mean().item(),
                           shape=hits[:, 0].float().mean().item(), colour=hits[:, 1].float().mean().item(),
                           direction=hits[:, 2].float().mean().item())


def evaluate(
    pipe: Any,
    n_prompts: int | None = None,
    seeds: tuple[int, ...] = (0,),
    num_inference_steps: int = clip_model.DEFAULT_STEPS,
    guidance_scale: float = clip_model.DEFAULT_GUIDANCE,
    classifier: FrameClassifier | None = None,
) -> AdherenceResult:
    """Prompt adherence of ``pipe`` over ``eval_prompts`` x ``seeds`` (seed ``s`` gives clip ``i``
    the noise seed ``1000 s + i``)."""
    prompts = clip_model.eval_prompts(n_prompts)
    clips, all_prompts = [], []
    for seed in seeds:
        clips.append(clip_model.generate(pipe, prompts, 1000 * seed, num_inference_steps, guidance_scale))
        all_prompts += prompts
    return adherence(torch.cat(clips), all_prompts, classifier)


def scorer(classifier: FrameClassifier | None = None) -> Callable[[torch.Tensor, str], dict[str, float]]:
    """A bench scorer: ``score(clips, prompt)`` -> ``adherence`` (shape, colour and direction all
    right) and ``adherence_attr`` (fraction of the three attributes right). Why: PSNR against the
    baseline says how much a method changed the clip, not whether it still shows the prompt."""
    classifier = classifier if classifier is not None else load_classifier()

    def score(clips: torch.Tensor, prompt: str) -> dict[str, float]:
        result = adherence(clips, [prompt] * clips.shape[0], classifier)
        return {"adherence": result.all_correct,
                "adherence_attr": (result.shape + result.colour + result.direction) / 3}

    return score


__all__ = ["CLASSIFIER_FILE", "FrameClassifier", "AdherenceResult", "load_classifier", "centre_track", "directions",
           "judge_clips", "adherence", "evaluate", "scorer"]
