from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from tests.conftest import folder_digest

import cellucid_export
from cellucid_export.cli import main


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "cellucid_export.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_end_to_end(pbmc, tmp_path):
    h5ad = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(h5ad)
    est = run("estimate", h5ad, "--genes", "highly_variable")
    assert est.returncode == 0, est.stderr
    assert "309 genes x 700 cells from raw.X" in est.stdout
    assert list(tmp_path.iterdir()) == [h5ad]

    out = tmp_path / "exports" / "pbmc"
    res = run("export", h5ad, out, "--genes", "highly_variable", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "309 genes" in res.stdout and "exporting raw.X" in res.stderr
    ex = cellucid_export.read_export(out)
    assert len(ex.gene_ids) == 309

    ins = run("inspect", out, "--gene", "CD79A")
    assert ins.returncode == 0 and "var/CD79A.values.u8.gz" in ins.stdout


def test_cli_options_and_errors(pbmc, tmp_path, capsys):
    h5ad = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(h5ad)
    panel = tmp_path / "panel.txt"
    panel.write_text("# B cells\nCD79A\nMS4A1\n")
    out = tmp_path / "panel"
    assert (
        main(
            [
                "export",
                str(h5ad),
                str(out),
                "--genes",
                f"@{panel}",
                "--var-quantization",
                "none",
                "--compression",
                "none",
                "--layout",
                "index",
                "--no-progress",
                "--n-jobs",
                "1",
            ]
        )
        == 0
    )
    ex = cellucid_export.read_export(out)
    assert ex.layout == "index" and ex.gene_ids == ["CD79A", "MS4A1"] and ex.bits is None
    np.testing.assert_array_equal(ex.gene("MS4A1"), pbmc.raw[:, "MS4A1"].X.toarray().ravel())

    assert main(["export", str(h5ad), str(tmp_path / "x"), "--genes", "CD79A,NOPE"]) == 2
    assert "NOPE" in capsys.readouterr().err
    assert main(["export", str(h5ad), str(out), "--genes", "CD79A"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(h5ad), str(tmp_path / "y"), "--max-bytes", "1000"]) == 2
    assert "max_bytes" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert main(["inspect", str(out), "--gene", "NOPE"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 'NOPE' is not in this export (2 genes, e.g. CD79A, MS4A1).")
    # A gene in the wrong case is named, the way it was exported.
    assert main(["inspect", str(out), "--gene", "cd79a"]) == 2
    assert "did you mean 'CD79A'?" in capsys.readouterr().err


def test_cli_genes_typo_of_a_column_is_named(pbmc, tmp_path, capsys):
    h5ad = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(h5ad)
    assert main(["estimate", str(h5ad), "--genes", "highly_variabel"]) == 2
    err = capsys.readouterr().err
    assert (
        "there is no var column and no gene of that name; did you mean the column 'highly_variable'?" in err
    )
    # One real gene is still one gene, and a misspelt gene is still an unknown gene.
    assert main(["estimate", str(h5ad), "--genes", "CD79A"]) == 0
    assert "ExportPlan: 1 gene x 700 cells from raw.X" in capsys.readouterr().out
    assert main(["estimate", str(h5ad), "--genes", "CD79Q"]) == 2
    assert "not in raw.X: 'CD79Q'" in capsys.readouterr().err


def test_validate_counts_problems_in_words(pbmc, tmp_path, capsys):
    out = tmp_path / "one"
    pbmc.cellucid.export(out, genes=["CD79A"], progress=False)
    (out / "var" / "CD79A.values.u8.gz").unlink()
    assert main(["validate", str(out)]) == 1
    assert ": 1 problem; the viewer may not open it." in capsys.readouterr().err


def test_cli_dataset_options(pbmc, tmp_path, capsys):
    """The dataset settings of the Python API are flags of the command too."""
    h5ad = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(h5ad)
    out = tmp_path / "out"
    flags = [
        "--created-at", "2024-01-02T03:04:05Z",
        "--source", "10x PBMC",
        "--obs-categorical-dtype", "uint16",
        "--vector-fields", "none",
        "--centroid-outlier-quantile", "0.9",
        "--centroid-min-points", "5",
        "--dataset-name", "pbmc",  # else named after each folder
    ]  # fmt: skip
    assert main(["export", str(h5ad), str(out), "--genes", "CD79A", "--no-progress", *flags]) == 0
    identity = json.loads((out / "dataset_identity.json").read_text())
    assert identity["created_at"] == "2024-01-02T03:04:05Z" and identity["source"] == {"name": "10x PBMC"}
    assert json.loads((out / "obs_manifest.json").read_text())["centroid_outlier_quantile"] == 0.9
    assert (out / "obs" / "bulk_labels.codes.u16.gz").is_file()
    assert not (out / "vectors").exists()
    # The same flags again give the same bytes (fixed creation time).
    again = tmp_path / "again"
    assert main(["export", str(h5ad), str(again), "--genes", "CD79A", "--no-progress", *flags]) == 0
    assert folder_digest(again) == folder_digest(out)
    capsys.readouterr()
    assert main(["export", str(h5ad), str(tmp_path / "bad"), "--created-at", "yesterday"]) == 2
    assert "created_at" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_cli_version():
    res = run("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"cellucid-export {cellucid_export.__version__}"
