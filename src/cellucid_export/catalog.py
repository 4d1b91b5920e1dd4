"""``datasets.json``: the list of datasets a Cellucid site hosts, built from the export folders."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from ._logging import logger
from .errors import CellucidExportError, ExportNotFoundError
from .plan import plural
from .resolve import _show
from .writer import write_json

__all__ = ["CatalogError", "write_catalog"]


class CatalogError(CellucidExportError, ValueError):
    """The folder's datasets cannot be listed in ``datasets.json``."""


def _entry(folder: Path) -> dict:
    ident_path = folder / "dataset_identity.json"
    try:
        ident = json.loads(ident_path.read_text(encoding="utf-8"))
        stats = ident["stats"]
        entry = {
            "id": ident["id"],
            "path": f"{folder.name}/",
            "name": ident["name"],
            "n_cells": stats["n_cells"],
            "n_genes": stats["n_genes"],
        }
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CatalogError(
            f"{ident_path} cannot be read as a dataset identity ({e}). Export that dataset again."
        ) from e
    if entry["id"] != folder.name:
        # The viewer finds a dataset at "<id>/", so the folder must carry the id.
        raise CatalogError(
            f"The dataset in {folder} has id {entry['id']!r}, but the viewer looks for it in a folder named like its "
            f"id. Rename the folder to {entry['id']!r}, or export again with dataset_id={folder.name!r}."
        )
    return entry


def write_catalog(root: os.PathLike | str, *, default: str | None = None) -> Path:
    """Write ``root/datasets.json`` listing every dataset folder directly below ``root``.

    Parameters
    ----------
    root
        The folder holding one export folder per dataset (each named like its dataset id).
    default
        Id of the dataset the viewer opens first (default: the first one, by folder name).

    Returns
    -------
    pathlib.Path
        The path of ``datasets.json``. It is written whole or not at all: an interrupted run leaves the
        previous file in place.

    Raises
    ------
    ExportNotFoundError
        ``root`` is not a folder (also a ``FileNotFoundError``).
    CatalogError
        ``root`` holds no dataset folders, a ``dataset_identity.json`` cannot be read, a folder is not
        named like its dataset id, or ``default`` is not one of the ids (also a ``ValueError``).

    """
    root = Path(root)
    if not root.is_dir():
        raise ExportNotFoundError(f"No such folder: {root}. Pass the folder that holds your export folders.")
    # Hidden folders are never datasets: .<name>.staging-* and .<name>.old-* are an export's own
    # working folders (left behind only if the process was killed outright).
    entries = [
        _entry(p)
        for p in sorted(root.iterdir())
        if not p.name.startswith(".") and p.is_dir() and (p / "dataset_identity.json").is_file()
    ]
    if not entries:
        raise CatalogError(
            f"{root} holds no dataset folders (folders with a dataset_identity.json). Export datasets into "
            f"subfolders first, e.g. adata.cellucid.export('{root}/pbmc') (cellucid-export export data.h5ad "
            f"{root}/pbmc from a shell)."
        )
    ids = [e["id"] for e in entries]
    if default is None:
        default = ids[0]
    elif default not in ids:
        raise CatalogError(f"default={default!r} is not one of the datasets in {root}: {_show(ids)}.")
    catalog = {"version": 1, "default": default, "datasets": entries}
    target = root / "datasets.json"
    tmp = root / f".datasets.json.{uuid.uuid4().hex[:8]}"
    try:
        write_json(tmp, catalog, indent=2)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info(f"wrote {target}: {plural(len(entries), 'dataset')}, default {default!r}.")
    return target
