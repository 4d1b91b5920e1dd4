from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
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
    err = capsys.readouterr().err
    assert "above --max-bytes 1.00 KB" in err and "--max-bytes none" in err and "max_bytes" not in err
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


def test_cli_no_genes_only_when_asked_by_name(pbmc, tmp_path, capsys):
    """--genes none exports the cell data only; an empty list (a comma, a file of comments) is an error."""
    h5ad = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(h5ad)
    (tmp_path / "genes.txt").write_text("# markers to add later\n")
    for empty in (",", f"@{tmp_path / 'genes.txt'}"):
        assert main(["export", str(h5ad), str(tmp_path / "x"), "--genes", empty, "--no-progress"]) == 2
        assert "lists no gene. Name genes, or pass --genes none" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["export", str(h5ad), str(tmp_path / "cells"), "--genes", "none", "--no-progress"]) == 0
    assert "no matrix (--genes none asks for the cell data only)" in capsys.readouterr().out
    assert not (tmp_path / "cells" / "var_manifest.json").exists()
    assert main(["inspect", str(tmp_path / "cells")]) == 0
    assert "a dataset without genes (exported with --genes none), 700 cells" in capsys.readouterr().out
    assert main(["validate", str(tmp_path / "cells")]) == 0


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
    assert "--created-at must be" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_cli_version():
    res = run("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"cellucid-export {cellucid_export.__version__}"


def test_cli_advice_names_options_not_python_keywords(pbmc, tmp_path, capsys):
    """From a shell, the fix in a message is a flag to type, not a Python keyword argument."""
    h5ad = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(h5ad)
    assert main(["estimate", str(h5ad), "--layer", "counts"]) == 2
    assert "Available: 'X', 'raw' (adata.raw). Pass one of them as --layer." in capsys.readouterr().err
    assert main(["estimate", str(h5ad), "--compression", "11"]) == 2
    assert capsys.readouterr().err.startswith("error: --compression must be none (no gzip) or a gzip level")
    assert main(["export", str(h5ad), str(tmp_path / "o"), "--embedding", "X_nope"]) == 2
    assert "error: --embedding names 'X_nope', not in obsm" in capsys.readouterr().err
    assert main(["export", str(h5ad), str(tmp_path / "o"), "--dataset-id", "a b"]) == 2
    assert "For example --dataset-id a-b, or leave it out" in capsys.readouterr().err
    assert main(["export", str(h5ad), str(tmp_path / "o"), "--connectivities", "distances2"]) == 2
    assert "--connectivities distances2 is not in obsp" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

    # Warnings and the log speak the same way, one line each.
    del pbmc.obsm["X_umap"]
    pbmc.write_h5ad(h5ad)
    assert main(["export", str(h5ad), str(tmp_path / "o"), "--genes", "CD79A", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "or name it with --embedding, then export again" in err
    assert "embeddings=" not in err and "CellucidExportWarning" not in err


def test_cli_connectivities_option(pbmc, tmp_path):
    """--connectivities draws another obsp graph; --no-connectivities none."""
    h5ad = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(h5ad)
    out = tmp_path / "dist"
    args = ["--genes", "CD79A", "--no-progress"]
    assert main(["export", str(h5ad), str(out), *args, "--connectivities", "distances"]) == 0
    d = pbmc.obsp["distances"]
    expected = sp.triu(d.maximum(d.T), k=1).tocoo()
    weights = np.frombuffer(gzip.decompress((out / "connectivity" / "edges.weights.f64.bin.gz").read_bytes()))
    np.testing.assert_array_equal(np.sort(weights), np.sort(expected.data))
    assert main(["export", str(h5ad), str(tmp_path / "none"), *args, "--no-connectivities"]) == 0
    assert not (tmp_path / "none" / "connectivity_manifest.json").exists()


def test_cli_estimate_says_whether_the_export_would_run(pbmc, tmp_path, capsys):
    h5ad = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(h5ad)
    assert main(["estimate", str(h5ad), "--max-bytes", "100KB"]) == 1  # 765 genes x 700 cells: 535.5 KB
    out = capsys.readouterr().out
    assert "above --max-bytes 100.00 KB: the export will refuse it" in out
    assert main(["estimate", str(h5ad), "--max-bytes", "none"]) == 0
    assert "max-bytes" not in capsys.readouterr().out
    assert main(["estimate", str(h5ad)]) == 0
    assert "within --max-bytes 8.00 GB" in capsys.readouterr().out


def test_cli_validate_names_the_viewers_and_checks_genes_only_folders(pbmc, tmp_path, capsys):
    h5ad = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(h5ad)
    for layout, says in (("name", "current viewer releases need an export with --layout index"),
                         ("index", "the index layout: current viewer releases open it")):  # fmt: skip
        out = tmp_path / layout
        assert (
            main(["export", str(h5ad), str(out), "--genes", "CD79A", "--layout", layout, "--no-progress"])
            == 0
        )
        capsys.readouterr()
        assert main(["validate", str(out)]) == 0
        assert says in capsys.readouterr().out
    genes = tmp_path / "genes"
    assert main(["export", str(h5ad), str(genes), "--genes", "CD79A", "--embedding", "none"]) == 0
    assert main(["validate", str(genes)]) == 1
    assert main(["validate", str(genes), "--genes-only"]) == 0
    # A full export checked for its genes only has nothing wrong either (its other files are not strays).
    assert main(["validate", str(tmp_path / "index"), "--genes-only"]) == 0
    # 'none' turns the graph off, as for the other options.
    assert (
        main(["export", str(h5ad), str(tmp_path / "nograph"), "--genes", "CD79A", "--connectivities", "none"])
        == 0
    )
    assert not (tmp_path / "nograph" / "connectivity_manifest.json").exists()


def test_cli_bad_number_is_a_sentence(pbmc, tmp_path, capsys):
    h5ad = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(h5ad)
    with pytest.raises(SystemExit):
        main(["estimate", str(h5ad), "--var-quantization", "abc"])
    err = capsys.readouterr().err
    assert "'abc' is not a whole number or 'none'" in err and "_optional_int" not in err


def test_cli_lists_take_spaces_and_none(pbmc, tmp_path):
    h5ad = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(h5ad)
    args = ["--genes", "CD79A, MS4A1", "--no-progress"]
    assert main(["export", str(h5ad), str(tmp_path / "a"), *args, "--obs-keys", "louvain, phase"]) == 0
    fields = json.loads((tmp_path / "a" / "obs_manifest.json").read_text())["_categoricalFields"]
    assert [f[0] for f in fields] == ["louvain", "phase"]
    assert main(["export", str(h5ad), str(tmp_path / "b"), *args, "--obs-keys", "none"]) == 0
    assert json.loads((tmp_path / "b" / "obs_manifest.json").read_text())["_categoricalFields"] == []
    assert main(["export", str(h5ad), str(tmp_path / "c"), *args, "--embedding", "none"]) == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["var", "var_manifest.json"]


def test_a_log_level_set_before_the_import_is_kept():
    code = (
        "import logging; logging.getLogger('cellucid_export').setLevel('WARNING'); import cellucid_export; "
        "print(logging.getLogger('cellucid_export').level)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == str(logging.WARNING), res.stderr


def test_shell_words_translate_values_and_leave_paths_and_code_alone():
    from cellucid_export.cli import _shell_words

    cases = {
        "Pass one of them as layer=.": "Pass one of them as --layer.",
        "For example dataset_id='My Data', or": "For example --dataset-id 'My Data', or",
        "n_jobs must be a positive integer, -1 or None (all cores), got 0.": (
            "--n-jobs must be a positive integer, or -1 (all cores), got 0."
        ),
        "or leave gene_id_column=None to use var_names.": "or leave out --gene-id-column to use var_names.",
        # Paths that start like an option, and Python code after a keyword, are not options.
        "source.h5ad cannot be opened as an .h5ad file": "source.h5ad cannot be opened as an .h5ad file",
        "layout holds gene expression only (embeddings=False)": "layout holds gene expression only (--embedding none)",
        "pass a list, e.g. genes=sorted(genes).": "pass a list, e.g. genes=sorted(genes).",
        "genes=[str(g) for g in genes]": "genes=[str(g) for g in genes]",
    }
    for python, shell in cases.items():
        assert _shell_words(python) == shell


def test_cli_summaries_and_sentences_speak_in_options(pbmc, tmp_path, capsys):
    h5ad = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(h5ad)
    out = tmp_path / "o"
    assert main(["export", str(h5ad), str(out), "--genes", "CD79A", "--layer", "raw", "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert "(--layer raw)" in summary and "--layout name, --var-quantization 8, --compression 6" in summary
    assert main(["validate", str(out), "--genes-only"]) == 0
    assert "OK, the gene files and var_manifest.json are valid." in capsys.readouterr().out
    assert main(["export", str(h5ad), str(tmp_path / "x"), "--dataset-id", "a b"]) == 2
    assert "derive it from --dataset-name" in capsys.readouterr().err
    assert main(["export", str(h5ad), str(tmp_path / "x"), "--genes", "@nowhere.txt"]) == 2
    assert "--genes @nowhere.txt: there is no file 'nowhere.txt'" in capsys.readouterr().err
    assert (
        main(["export", str(h5ad), str(tmp_path / "x"), "--embedding", "X_umap", "--embedding", "none"]) == 2
    )
    assert "cannot be combined" in capsys.readouterr().err
    # The size guard suggests a kind of selection, not a column this file may not have.
    assert main(["export", str(h5ad), str(tmp_path / "x"), "--max-bytes", "100"]) == 2
    assert (
        "--genes a boolean var column such as highly_variable, a marker list or a panel"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "x").exists()
