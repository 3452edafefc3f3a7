"""The start and the span of each pipeline call, told to the session by the pipeline itself.

Every diffusers pipeline opens its progress bar (``self.progress_bar(...)``) right before its
denoising loop and runs the whole loop inside it. Wrapping that one method on the instance
gives the session (1) a generation boundary that cannot be missed, whatever happened to the
previous call (an exception, an interrupt, another strength), and (2) the span in which the
denoiser's calls belong to this pipeline: a ``from_pipe`` sibling sharing the denoiser, or a
direct call of the module, runs it plain.
"""

from __future__ import annotations

from typing import Any, Iterator


class _MarkedBar:
    """The pipeline's own progress bar, with the loop's span reported to the session."""

    def __init__(self, bar: Any, session: Any) -> None:
        self._bar = bar
        self._session = session

    def __enter__(self) -> Any:
        self._session.enter_pipeline_call()
        return self._bar.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        self._session.exit_pipeline_call()
        return self._bar.__exit__(*exc)

    def __iter__(self) -> Iterator[Any]:
        self._session.enter_pipeline_call()
        try:
            yield from self._bar
        finally:
            self._session.exit_pipeline_call()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)


class GenerationMarker:
    """Stands in for ``pipe.progress_bar`` while the pipeline is accelerated."""

    def __init__(self, session: Any, original: Any) -> None:
        self.session = session
        self.original = original

    def __call__(self, *args: Any, **kwargs: Any) -> _MarkedBar:
        self.session.begin_generation()
        return _MarkedBar(self.original(*args, **kwargs), self.session)

    def __deepcopy__(self, memo: dict) -> Any:
        raise_copy_error(self.session)


def raise_copy_error(session: Any) -> None:
    """What to do instead of copying an accelerated pipeline (its hooks would be shared)."""
    name = type(session.pipe).__name__ if session.pipe is not None else "the pipeline"
    raise TypeError(
        f"copy.deepcopy of an accelerated {name} is not supported: the copy would carry hooks bound to the "
        "original's SADA session. Copy it plain and accelerate each: sadakit.remove(pipe); "
        "twin = copy.deepcopy(pipe); sadakit.accelerate(pipe); sadakit.accelerate(twin)"
    )


def install_marker(pipe: Any, session: Any) -> bool:
    """Wrap ``pipe.progress_bar``; False when the pipeline has none (custom pipelines)."""
    if not callable(getattr(type(pipe), "progress_bar", None)):
        return False
    marker = GenerationMarker(session, pipe.progress_bar)
    previous = pipe.__dict__.get("progress_bar")
    session.marker_previous = previous
    object.__setattr__(pipe, "progress_bar", marker)
    return True


def remove_marker(pipe: Any, session: Any) -> None:
    marker = pipe.__dict__.get("progress_bar") if pipe is not None else None
    if isinstance(marker, GenerationMarker) and marker.session is session:
        previous = getattr(session, "marker_previous", None)
        if previous is None:
            del pipe.__dict__["progress_bar"]
        else:
            object.__setattr__(pipe, "progress_bar", previous)
