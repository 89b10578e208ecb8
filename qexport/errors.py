"""Typed errors. The CLI prints one line for any QExportError and exits 2."""

from __future__ import annotations


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


class UsageError(QExportError):
    """A flag or argument combination makes no sense."""
