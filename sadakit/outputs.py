"""How ``sadakit generate`` and :func:`sadakit.generate_many` save what a pipeline makes.

An :class:`OutputFormat` names a kind of output ("image", "video", "audio", or a plugin's own
such as "mesh"), the file extensions it is written as, where the samples are in the
pipeline's output, and how one sample is written. The three built-in kinds are here; a plugin
adds its own with the ``sadakit_output_formats`` hook and names it from ``sadakit_output_kind``,
so a third-party modality gets the command line (single outputs and prompt sets) too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

#: write(pipe, sample, path, options) -> (the path written, a note or None). ``options`` holds
#: the command line's output options (``fps``); a writer may write beside ``path`` (a GIF when
#: no MP4 encoder is installed) and says so in the note.
Writer = Callable[[Any, Any, Path, dict], "tuple[Path, str | None]"]


@dataclass(frozen=True)
class OutputFormat:
    """One kind of output and how a sample of it is saved, one sample per file."""

    kind: str
    #: accepted output extensions, lower case with the dot; the first names prompt-set files
    suffixes: tuple[str, ...]
    #: the attribute of the pipeline's output that holds the batch of samples (``"images"``)
    output_field: str
    write: Writer
    #: the call argument asking for several samples per prompt (sadakit asks for one), or None
    per_prompt_arg: str | None = None
    #: passed to the pipeline as ``output_type`` (None: not passed)
    output_type: str | None = "np"
    noun: str = ""  # for messages: "images", "videos"; default: the kind

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not re.fullmatch(r"[a-z][a-z0-9_-]*", self.kind):
            raise ValueError(f"OutputFormat.kind must be a lower-case name such as 'mesh', got {self.kind!r}")
        suffixes = tuple(self.suffixes)
        if not suffixes or not all(isinstance(s, str) and re.fullmatch(r"\.[a-z0-9]+", s) for s in suffixes):
            raise ValueError(f"OutputFormat {self.kind!r}: suffixes must be lower-case extensions with the dot, "
                             f"such as ('.ply',), got {self.suffixes!r}")
        if not callable(self.write):
            raise TypeError(f"OutputFormat {self.kind!r}: write must be callable, got {type(self.write).__name__}")
        object.__setattr__(self, "suffixes", suffixes)
        object.__setattr__(self, "noun", self.noun or self.kind)


def _write_image(pipe: Any, sample: Any, path: Path, options: dict) -> tuple[Path, str | None]:
    pipe.numpy_to_pil(sample[None])[0].save(path, format=_PIL_FORMATS.get(_suffix(path), None))
    return path, None


def _write_video(pipe: Any, sample: Any, path: Path, options: dict) -> tuple[Path, str | None]:
    from .video_io import write_video

    return write_video(sample, path, fps=int(options.get("fps", 8)))


def _write_audio(pipe: Any, sample: Any, path: Path, options: dict) -> tuple[Path, str | None]:
    import numpy as np

    from .audio_io import pipeline_sample_rate, write_wav

    (written,) = write_wav(path, np.asarray(sample)[None], pipeline_sample_rate(pipe))
    return written, None


def _suffix(path: Path) -> str:
    return path.suffix.lower()


# names PIL knows the formats by, for temporary names that end in ".tmp.png" and the like
_PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}

IMAGE = OutputFormat("image", (".png", ".jpg", ".jpeg", ".webp"), "images", _write_image,
                     per_prompt_arg="num_images_per_prompt", noun="images")
VIDEO = OutputFormat("video", (".mp4", ".gif"), "frames", _write_video, per_prompt_arg="num_videos_per_prompt",
                     noun="videos")
AUDIO = OutputFormat("audio", (".wav",), "audios", _write_audio, per_prompt_arg="num_waveforms_per_prompt",
                     noun="audio")
BUILT_IN = {f.kind: f for f in (IMAGE, VIDEO, AUDIO)}

__all__ = ["AUDIO", "BUILT_IN", "IMAGE", "VIDEO", "OutputFormat", "Writer"]
