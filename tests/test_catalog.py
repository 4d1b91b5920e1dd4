"""datasets.json for hosting several datasets."""

from __future__ import annotations

import json
import shutil

import pytest
from tests.conftest import make_scrna

import cellucid_export
from cellucid_export.catalog import CatalogError
from cellucid_export.cli import main


@pytest.fixture
def root(tmp_path):
    make_scrna(n_cells=50, n_genes=5).cellucid.export(tmp_path / "b-set", progress=False)
    make_scrna(n_cells=30, n_genes=4, seed=1).cellucid.export(
        tmp_path / "a-set", dataset_name="First set", dataset_id="a-set", genes=["G1", "G2"], progress=False
    )
    (tmp_path / "notes").mkdir()  # not a dataset: ignored
    return tmp_path


def test_catalog(root):
    path = cellucid_export.write_catalog(root)
    assert json.loads(path.read_text()) == {
        "version": 1,
        "default": "a-set",
        "datasets": [
            {"id": "a-set", "path": "a-set/", "name": "First set", "n_cells": 30, "n_genes": 2},
            {"id": "b-set", "path": "b-set/", "name": "b-set", "n_cells": 50, "n_genes": 5},
        ],
    }
    cellucid_export.write_catalog(root, default="b-set")
    assert json.loads(path.read_text())["default"] == "b-set"
    with pytest.raises(CatalogError, match=r"default='zzz' is not one of the datasets.*'a-set', 'b-set'"):
        cellucid_export.write_catalog(root, default="zzz")


def test_default_id_is_the_folder_name_so_the_catalog_fits(root):
    """A folder name that is a valid id is kept as the id, case included; another is made into one."""
    make_scrna(n_cells=20, n_genes=3).cellucid.export(root / "PBMC_68k", progress=False)
    entries = json.loads(cellucid_export.write_catalog(root).read_text())["datasets"]
    assert {"id": "PBMC_68k", "path": "PBMC_68k/", "name": "PBMC_68k", "n_cells": 20, "n_genes": 3} in entries
    res = make_scrna(n_cells=20, n_genes=3).cellucid.export(root / "my data", progress=False)
    assert res.dataset_id == "my-data"


def test_catalog_needs_folder_named_like_the_id(root):
    (root / "b-set").rename(root / "other")
    with pytest.raises(CatalogError, match=r"has id 'b-set'.*Rename the folder to 'b-set'"):
        cellucid_export.write_catalog(root)
    assert not (root / "datasets.json").exists()


def test_catalog_cli(root, tmp_path_factory, capsys):
    assert main(["catalog", str(root), "--default", "b-set"]) == 0
    assert json.loads((root / "datasets.json").read_text())["default"] == "b-set"
    empty = tmp_path_factory.mktemp("empty")
    assert main(["catalog", str(empty)]) == 2
    assert "holds no dataset folders" in capsys.readouterr().err


def test_catalog_skips_an_exports_hidden_working_folders(root):
    """.<name>.staging-* and .<name>.old-* are left behind only by a killed export; they are no dataset."""
    leftover = root / ".pbmc.old-1234abcd"
    shutil.copytree(next(p for p in root.iterdir() if (p / "dataset_identity.json").is_file()), leftover)
    catalog = json.loads(cellucid_export.write_catalog(root).read_text())
    assert all(not d["id"].startswith(".") for d in catalog["datasets"])
