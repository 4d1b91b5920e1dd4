"""The package logger: messages a biologist should see (which matrix was picked and why)."""

from __future__ import annotations

import logging
import os
import sys
import warnings

logger = logging.getLogger("cellucid_export")
if not logger.handlers:
    # Like scanpy, speak up by default; silence with logging.getLogger("cellucid_export").setLevel("WARNING").
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("cellucid-export: %(message)s"))
    logger.addHandler(_handler)
    if logger.level == logging.NOTSET:  # a level set before the import (to silence it) is kept
        logger.setLevel(logging.INFO)
    logger.propagate = False


def warn(message: str) -> None:
    """Warn with a :class:`~cellucid_export.CellucidExportWarning` pointing at the user's line.

    The line is the first caller outside this package, however deep the call came from (a fixed
    ``stacklevel`` points into the package from some entry points).
    """
    from .errors import CellucidExportWarning

    here = os.path.dirname(__file__) + os.sep
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(here):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, CellucidExportWarning, stacklevel=level)
