"""The package logger: messages a biologist should see (which matrix was picked and why)."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("cellucid_export")
if not logger.handlers:
    # Like scanpy, speak up by default; silence with logging.getLogger("cellucid_export").setLevel("WARNING").
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("cellucid-export: %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
