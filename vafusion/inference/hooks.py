"""Hooks for :class:`~vafusion.inference.predictor.Predictor`: progress bars, and keeping what each step made.

A hook is any callable ``hook(step, artifact=None, *, file=None, completed=None, total=None)``; the
predictor calls it with ``"faces"`` (progress counts) while decoding, ``"features"`` when a video's features
are ready and ``"prediction"`` at the end, so that progress display and intermediate results plug in
without touching the pipeline (pyannote.audio's hooks work the same way).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm import tqdm


class ProgressHook:
    """A progress bar per video over its frames (closed when the video's features are done)."""

    def __init__(self) -> None:
        self._bar: tqdm | None = None
        self._file: Path | None = None

    def __call__(
        self,
        step: str,
        artifact: Any = None,
        *,
        file: Path | None = None,
        completed: int | None = None,
        total: int | None = None,
    ) -> None:
        """Advance or close the bar of ``file``."""
        if step == "faces" and completed is not None:
            if self._bar is None or file != self._file:
                self.close()
                self._bar = tqdm(
                    total=total,
                    desc=Path(file).name if file else None,
                    unit="frame",
                    dynamic_ncols=True,
                    leave=False,
                )
                self._file = file
            self._bar.update(completed - self._bar.n)
        elif step in ("features", "prediction"):
            self.close()

    def close(self) -> None:
        """Close the open bar, if any."""
        if self._bar is not None:
            self._bar.close()
        self._bar, self._file = None, None


class ArtifactHook:
    """Keeps the artifacts of every step per file: ``hook.artifacts[path][step]``."""

    def __init__(self) -> None:
        self.artifacts: dict[Path | None, dict[str, Any]] = {}

    def __call__(
        self,
        step: str,
        artifact: Any = None,
        *,
        file: Path | None = None,
        completed: int | None = None,
        total: int | None = None,
    ) -> None:
        """Store ``artifact`` under ``file`` and ``step`` (progress calls carry none and are skipped)."""
        if artifact is not None:
            self.artifacts.setdefault(file, {})[step] = artifact


class Hooks:
    """Several hooks called in turn."""

    def __init__(self, *hooks: Any) -> None:
        self.hooks = [h for h in hooks if h is not None]

    def __call__(self, step: str, artifact: Any = None, **kwargs: Any) -> None:
        """Call every hook with the same arguments."""
        for hook in self.hooks:
            hook(step, artifact, **kwargs)
