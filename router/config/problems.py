"""Configuration problems, reported as ``path:line: message``.

Validators collect every problem they find instead of stopping at the first one, so an
operator fixes a broken deployment in one pass (the way octoDNS reports record errors).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with one operator file."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        # Line 0 marks a problem with a directory or a whole deployment, not a file line.
        if self.line == 0:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}: {self.message}"


class ConfigError(Exception):
    """The deployment cannot be loaded; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))

    def report(self, directory: Path | str) -> str:
        """Every problem on its own line, then how many: what ``router check`` prints."""
        return "\n".join(
            [*(str(p) for p in self.problems), f"{len(self.problems)} problem(s) in {directory}"]
        )
