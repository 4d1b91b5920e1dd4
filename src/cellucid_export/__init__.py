"""Export AnnData to the Cellucid web viewer: embeddings, cell metadata, graph and gene expression.

Importing this package registers the ``adata.cellucid`` namespace::

    import cellucid_export
    adata.cellucid.export("exports/pbmc", genes=adata.var.highly_variable)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import errors, pl
from .accessor import CellucidAccessor
from .catalog import write_catalog
from .dataset import DatasetError
from .errors import CellucidExportError, CellucidExportWarning
from .export import ExportResult, estimate_h5ad, export_h5ad
from .plan import DEFAULT_MAX_BYTES, DEFAULT_MEMORY_BUDGET, ExportPlan
from .reader import Export, read_export
from .validate import validate

try:
    __version__ = version("cellucid-export")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MEMORY_BUDGET",
    "CellucidAccessor",
    "CellucidExportError",
    "CellucidExportWarning",
    "DatasetError",
    "Export",
    "ExportPlan",
    "ExportResult",
    "errors",
    "estimate_h5ad",
    "export_h5ad",
    "pl",
    "read_export",
    "validate",
    "write_catalog",
]
