"""The shapes model's judge: an independent classifier of shape, colour and position.

Independent of the diffusion model (trained only on generator images), so "does the image
show what the prompt asked for" is measured, not eyeballed. Evaluation code: the model itself
(:mod:`.model`) does not need it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from sadakit.bundled import data_shapes
from sadakit.bundled._files import MODELS_DIR, load_safetensors_checked

from . import model as shapes_model

CLASSIFIER_FILE = MODELS_DIR / "shapes-classifier" / "model.safetensors"
CLASSIFIER_CONFIG = MODELS_DIR / "shapes-classifier" / "config.json"


class ShapesClassifier(nn.Module):
    """Small CNN with one head per attribute (shape, colour, position).

    Independent of the diffusion model: it is trained only on generator images (with
    blur and noise augmentation), so it judges generations the way it judges real data.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.width = width
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.GELU(),  # 16
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, stride=2), nn.GELU(),  # 8
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, stride=2), nn.GELU(),  # 4
            nn.Flatten(),
        )
        hidden = 2 * width * 4 * 4
        self.heads = nn.ModuleDict(
            {
                "shape": nn.Linear(hidden, len(data_shapes.SHAPES)),
                "colour": nn.Linear(hidden, len(data_shapes.COLOURS)),
                "position": nn.Linear(hidden, len(data_shapes.POSITIONS)),
            }
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute for ``(n, 3, 32, 32)`` images in [0, 1]."""
        h = self.features(images * 2 - 1)
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """``(n, 3)`` predicted (shape, colour, position) indices."""
        logits = self(images)
        return torch.stack([logits[k].argmax(-1) for k in ("shape", "colour", "position")], dim=1)


def load_classifier(path: Path | str | None = None) -> ShapesClassifier:
    """The shipped adherence classifier (``models/shapes-classifier``), in eval mode."""
    weights = Path(path) if path is not None else CLASSIFIER_FILE
    config_file = weights.parent / "config.json"
    try:
        width = int(json.loads(config_file.read_text())["width"])
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"bundled classifier config is missing: {config_file}") from exc
    except (ValueError, KeyError) as exc:
        raise ValueError(f"bundled classifier config is corrupted: {config_file} ({exc})") from exc
    model = ShapesClassifier(width)
    state = load_safetensors_checked(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"bundled classifier weights do not match the architecture: {weights} ({exc})") from exc
    return model.eval()




@dataclass(frozen=True)
class AdherenceResult:
    """Fraction of generations whose classified attributes match the prompt."""

    n: int
    all_correct: float
    shape: float
    colour: float
    position: float

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "all": self.all_correct, "shape": self.shape, "colour": self.colour, "position": self.position}


def adherence(
    images: torch.Tensor, prompts: list[str], classifier: ShapesClassifier | None = None
) -> AdherenceResult:
    """Classify ``images`` and compare with what ``prompts`` asked for."""
    classifier = classifier if classifier is not None else load_classifier()
    target = torch.tensor([[l.shape, l.colour, l.position] for l in map(data_shapes.parse_prompt, prompts)])
    predicted = classifier.predict(images)
    hits = predicted == target
    return AdherenceResult(
        n=len(prompts),
        all_correct=hits.all(dim=1).float().mean().item(),
        shape=hits[:, 0].float().mean().item(),
        colour=hits[:, 1].float().mean().item(),
        position=hits[:, 2].float().mean().item(),
    )


def evaluator_for(model: Any) -> Callable[..., AdherenceResult]:
    """``evaluate`` for a model of the shapes data (its module's ``eval_prompts``, ``generate``
    and default sampling), judged by this one classifier: the UNet and the DiT model share it."""

    def evaluate(
        pipe: Any,
        n_prompts: int | None = None,
        seeds: tuple[int, ...] = (0,),
        num_inference_steps: int = model.DEFAULT_STEPS,
        guidance_scale: float = model.DEFAULT_GUIDANCE,
        classifier: ShapesClassifier | None = None,
    ) -> AdherenceResult:
        """Prompt adherence of ``pipe`` over ``eval_prompts`` x ``seeds`` (seed ``s`` gives image
        ``i`` the noise seed ``1000 s + i``)."""
        prompts = model.eval_prompts(n_prompts)
        all_images, all_prompts = [], []
        for seed in seeds:
            all_images.append(model.generate(pipe, prompts, 1000 * seed, num_inference_steps, guidance_scale))
            all_prompts += prompts
        return adherence(torch.cat(all_images), all_prompts, classifier)

    return evaluate


evaluate = evaluator_for(shapes_model)


def scorer(classifier: ShapesClassifier | None = None) -> Callable[[torch.Tensor, str], dict[str, float]]:
    """A bench scorer: ``score(images, prompt)`` -> ``adherence`` (shape, colour and position all
    right) and ``adherence_attr`` (fraction of the three attributes right). Why: PSNR against the
    baseline says how much a method changed the picture, not whether it still shows the prompt."""
    classifier = classifier if classifier is not None else load_classifier()

    def score(images: torch.Tensor, prompt: str) -> dict[str, float]:
        with torch.no_grad():
            result = adherence(images, [prompt] * images.shape[0], classifier)
        return {"adherence": result.all_correct, "adherence_attr": (result.shape + result.colour + result.position) / 3}

    return score
