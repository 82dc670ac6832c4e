"""The two kinds of error prune-study raises on purpose, for every package to derive from.

Standard library only, so the command line can tell them apart without importing torch.
The command line prints either kind as one line, without a traceback, and exits 2;
any other :class:`PruneStudyError` exits 1, also without a traceback.
"""

from __future__ import annotations

__all__ = ["InputError", "PruneStudyError", "StudyFilesError"]


class PruneStudyError(Exception):
    """An error prune-study raises on purpose, with a message that says what to do."""


class InputError(PruneStudyError, ValueError):
    """The user's input is wrong: a spec, an argument, a model, data or a method's setting."""


class StudyFilesError(PruneStudyError, ValueError):
    """Files on disk are wrong: a study directory, a checkpoint or a cached base model that
    is missing, damaged, foreign or already in use."""
