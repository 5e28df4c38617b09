"""The one exception type users see.

Every bad input (corrupt file, wrong shape, missing key, empty folder) is turned into an
:class:`LdmonaiError` that names the offending file and says how to fix it, so a user never
has to read a traceback from deep inside pydicom or torch.
"""

from __future__ import annotations

import os


class LdmonaiError(Exception):
    """A user-facing error: what went wrong, where, and what to do about it.

    Args:
        message: what is wrong, in one sentence.
        path: the file or folder it concerns, if any.
        fix: what the user can do about it, if known.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, fix: str | None = None):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.fix:
            text += f" (fix: {self.fix})"
        return text

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.message, "fix": self.fix}
