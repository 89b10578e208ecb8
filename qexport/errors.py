"""Typed errors. The CLI prints one line for any QExportError and exits 2."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of a third-party exception's message (its type name when it has none),
    cut to ``limit`` characters: what a one-line error can quote of it."""
    text = str(exc)
    return text.splitlines()[0][:limit] if text.strip() else type(exc).__name__


class QExportError(Exception):
    """Base of every error qexport raises on purpose: bad input, usage or an unsupported model.

    The message is one line: what was wrong, where, and what to do.
    """


class SourceError(QExportError):
    """The model source (file or directory) cannot be loaded."""


class UnsafeSourceError(SourceError):
    """Loading the source would execute code (pickle, custom HF code)."""


class CaptureError(QExportError):
    """torch.export failed or produced an op outside the IR's set."""


class QirFormatError(QExportError):
    """A .qir file is malformed, truncated or of an unknown version."""


class IRError(QExportError):
    """An IR graph violates its own invariants (dangling value, bad attr...)."""


class OutputError(QExportError):
    """The output directory cannot be written."""


class LoweringError(QExportError):
    """A backend cannot lower a node: names the op, the node, the backend and what it supports."""

    def __init__(self, backend: str, op: str, node: str, supported: list[str], what: str = "") -> None:
        self.backend, self.op, self.node, self.supported = backend, op, node, supported
        reason = f": {what}" if what else ""
        super().__init__(
            f"{backend} backend cannot lower op {op} (node {node!r}){reason}; supported: {', '.join(supported)}"
        )


class UsageError(QExportError):
    """A flag or argument combination makes no sense."""
