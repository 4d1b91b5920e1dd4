"""Exceptions and warnings raised by cellucid-export.

Every error subclasses :class:`CellucidExportError` and a built-in type (``ValueError``,
``KeyError``...) so ``except ValueError`` keeps working. Messages name the problem and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

__all__ = [
    "CellucidExportError",
    "CellucidExportWarning",
    "DiskFullError",
    "DuplicateGeneError",
    "ExportExistsError",
    "ExportNotFoundError",
    "ExportReadError",
    "ExportTooLargeError",
    "GeneIdCollisionError",
    "InputNotFoundError",
    "InputReadError",
    "InvalidGeneIdError",
    "InvalidParameterError",
    "MatrixChoiceError",
    "OrientationError",
    "OverwriteRefusedError",
    "TargetNotWritableError",
    "TargetParentNotFolderError",
    "UnknownGeneError",
    "UnsupportedMatrixError",
]


def closest(name: str, known: Sequence[str], n: int = 1, cutoff: float = 0.75) -> list[str]:
    """The known names a misspelt ``name`` may mean, for "did you mean" advice.

    Names that differ only in case come first ('CD79A' for 'cd79a'); else the closest spellings.
    """
    folded = name.casefold()
    same = [k for k in known if k.casefold() == folded]
    return same[:n] if same else difflib.get_close_matches(name, known, n=n, cutoff=cutoff)


class CellucidExportError(Exception):
    """Base class of all errors raised by cellucid-export."""

    def __str__(self) -> str:
        # KeyError quotes its message; every error here is a sentence for a person.
        return str(self.args[0]) if self.args else ""


class InvalidParameterError(CellucidExportError, ValueError):
    """An argument has a value the export does not accept."""


class MatrixChoiceError(CellucidExportError, ValueError):
    """The expression matrix to export could not be chosen (missing layer, nothing suitable)."""


class OrientationError(CellucidExportError, ValueError):
    """The matrix is not cells x genes."""


class UnknownGeneError(CellucidExportError, KeyError):
    """Requested genes do not exist."""


class DuplicateGeneError(CellucidExportError, ValueError):
    """Gene ids are not unique."""


class InvalidGeneIdError(CellucidExportError, ValueError):
    """Gene ids are empty, not strings, or carry surrounding whitespace."""


class GeneIdCollisionError(CellucidExportError, ValueError):
    """Gene ids that map to the same file name in the name layout."""


class ExportTooLargeError(CellucidExportError, ValueError):
    """The planned export is above ``max_bytes`` or the free disk space."""


class ExportExistsError(CellucidExportError, FileExistsError):
    """The target folder exists and ``overwrite=False``."""


class DiskFullError(CellucidExportError, OSError):
    """The disk filled up during the export (nothing is left at the target)."""


class ExportNotFoundError(CellucidExportError, FileNotFoundError):
    """An export folder to read does not exist, holds no ``var_manifest.json``, or lacks a gene file it lists."""


class ExportReadError(CellucidExportError, ValueError):
    """A file of an export folder is damaged (cut short, corrupt, or not in the format) and cannot be read."""


class InputNotFoundError(CellucidExportError, FileNotFoundError):
    """The ``.h5ad`` file to export does not exist."""


class InputReadError(CellucidExportError, OSError):
    """The ``.h5ad`` file cannot be read: cut short (an unfinished copy or download), damaged, or not readable."""


class UnsupportedMatrixError(CellucidExportError, TypeError):
    """The expression matrix is of a type the export cannot read."""


class CellucidExportWarning(UserWarning):
    """Something the viewer may not show the way the user expects."""


class OverwriteRefusedError(ExportExistsError):
    """``overwrite=True``, but the existing target is not a previous export or holds the working directory.

    Replacing removes the whole folder, so only an empty folder or a folder written by a cellucid export
    is ever replaced; anything else is left untouched.
    """


class TargetNotWritableError(CellucidExportError, PermissionError):
    """The export folder cannot be created: no permission to write where it goes."""


class TargetParentNotFolderError(CellucidExportError, NotADirectoryError):
    """The export folder cannot be created: a path above it is a file, not a folder."""
