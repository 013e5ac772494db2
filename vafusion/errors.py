"""One error type for bad input: what file, what is wrong, what to do.

The CLI prints ``VafusionError`` as a single line on stderr and exits with code 2;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class VafusionError(Exception):
    """Bad input that the user can fix.

    Args:
        path: the file or folder at fault (``None`` when no file is involved).
        problem: what is wrong, in a few words.
        fix: what to do about it.
    """

    def __init__(self, path: str | Path | None, problem: str, fix: str = "") -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """``path: problem; fix`` on one line."""
        head = f"{self.path}: {self.problem}" if self.path is not None else self.problem
        return f"{head}; {self.fix}" if self.fix else head


class WeightsError(VafusionError):
    """A weights file is missing, of the wrong architecture, truncated or unsafe."""


class MediaError(VafusionError):
    """A video or audio file cannot be decoded (corrupt, empty, no stream)."""


class AnnotationError(VafusionError):
    """An annotation file breaks the Aff-Wild2 format."""


class OutputError(VafusionError):
    """A destination that cannot be written: not a folder, read-only, no permission, or a full disk.

    Unlike an error in one input, it stops the whole command: every later write would fail the same way.
    """
