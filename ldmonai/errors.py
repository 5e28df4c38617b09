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

    @classmethod
    def from_dict(cls, entry: dict) -> "LdmonaiError":
        """The inverse of :meth:`to_dict`, for the failure entries that batch reports keep."""
        return cls(entry["reason"], entry.get("path"), entry.get("fix"))


class UsageError(LdmonaiError):
    """A bad argument or path: the command cannot start (a missing input, an unreadable config).

    The ``ldmonai`` command exits with 2 for it, as for argparse's own errors, and with 1 when
    the command ran but some cases failed: one convention for every subcommand.
    """


EXIT_OK, EXIT_CASES_FAILED, EXIT_USAGE = 0, 1, 2


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, or its type name when the message is empty: the
    part of a library's error worth quoting inside an :class:`LdmonaiError`."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def find_ldmonai_error(exc: BaseException | None) -> LdmonaiError | None:
    """The first :class:`LdmonaiError` in ``exc``'s cause/context chain, if any.

    MONAI wraps errors raised inside transforms in ``RuntimeError("applying transform ...")``;
    the user-facing error is underneath.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, LdmonaiError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def install_excepthook() -> None:
    """Print an uncaught :class:`LdmonaiError` as one line instead of a traceback.

    Bundle configs call this in their ``initialize`` list, so ``python -m monai.bundle run``
    reports a bad case the way the ``ldmonai`` CLI does. Other exceptions keep Python's
    default traceback.
    """
    import sys

    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        err = find_ldmonai_error(exc)
        if err is None:
            previous(exc_type, exc, tb)
        else:
            print(f"ldmonai: error: {err}", file=sys.stderr)

    sys.excepthook = hook
