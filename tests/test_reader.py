"""read_export() on damaged folders raises CellucidExportError subclasses that name the file and the fix."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import cellucid_export
from cellucid_export.cli import main
from cellucid_export.codec import get_codec, gzip_decompress
from cellucid_export.errors import ExportNotFoundError, ExportReadError

GENES = ["CD79A", "MS4A1"]


@pytest.fixture(scope="module")
def exports(pbmc_master, tmp_path_factory):
    d = tmp_path_factory.mktemp("exports")
    q8 = pbmc_master.cellucid.export(d / "q8", genes=GENES, progress=False).path
    f32 = pbmc_master.cellucid.export(
        d / "f32", genes=GENES, var_quantization=None, compression=None, layout="index", progress=False
    ).path
    return {"q8": q8, "f32": f32}


@pytest.fixture
def q8(exports, tmp_path):
    out = tmp_path / "q8"
    shutil.copytree(exports["q8"], out)
    return out


def _read_error(folder, gene="CD79A"):
    with pytest.raises(ExportReadError) as info:
        cellucid_export.read_export(folder).gene(gene)
    err = info.value
    # Both bases: `except CellucidExportError` and existing `except ValueError` code catch it.
    assert isinstance(err, cellucid_export.CellucidExportError) and isinstance(err, ValueError)
    assert f"cellucid-export validate {folder}" in str(err)
    return str(err)


def test_truncated_gene_file(q8):
    f = q8 / "var" / "CD79A.values.u8.gz"
    f.write_bytes(f.read_bytes()[:50])
    msg = _read_error(q8)
    assert msg.startswith("Gene 'CD79A' cannot be read: var/CD79A.values.u8.gz is a truncated gzip file.")
    assert "copy the folder again or export again" in msg
    # The other gene is intact and still reads.
    assert cellucid_export.read_export(q8).gene("MS4A1").shape == (700,)


def test_corrupt_appended_and_not_gzip_gene_files(q8):
    f = q8 / "var" / "CD79A.values.u8.gz"
    good = f.read_bytes()
    f.write_bytes(good[:10] + bytes(len(good) - 18) + good[-8:])
    assert "var/CD79A.values.u8.gz is a corrupt gzip file" in _read_error(q8)
    f.write_bytes(good + good)
    assert "a second gzip member" in _read_error(q8)
    f.write_bytes(b"\x00" * 700)
    assert "is not a gzip file although its name ends in .gz" in _read_error(q8)
    f.write_bytes(get_codec(6).encode(gzip_decompress(good)[:-3]))
    assert "holds 697 bytes, but 700 values of uint8 (one per cell) are 700 bytes" in _read_error(q8)


def test_wrong_length_float32_file(exports, tmp_path):
    out = tmp_path / "f32"
    shutil.copytree(exports["f32"], out)
    f = out / "var" / "1.values.f32"
    f.write_bytes(f.read_bytes()[:-2])  # not even a whole float32: numpy refused the buffer
    msg = _read_error(out, "MS4A1")
    assert (
        "var/1.values.f32 holds 2,798 bytes, but 700 values of float32 (one per cell) are 2,800 bytes" in msg
    )


def test_missing_gene_file(q8):
    (q8 / "var" / "MS4A1.values.u8.gz").unlink()
    with pytest.raises(ExportNotFoundError, match=r"var/MS4A1.values.u8.gz is missing from") as info:
        cellucid_export.read_export(q8).gene("MS4A1")
    assert isinstance(info.value, FileNotFoundError)


def test_missing_folder_file_and_folder_without_genes(q8, tmp_path):
    with pytest.raises(ExportNotFoundError, match="does not exist. Check the path") as info:
        cellucid_export.read_export(tmp_path / "missing_dir")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ExportNotFoundError, match="is a file, not an export folder"):
        cellucid_export.read_export(q8 / "dataset_identity.json")
    (q8 / "var_manifest.json").unlink()
    with pytest.raises(ExportNotFoundError, match="has no var_manifest.json.*exported without genes"):
        cellucid_export.read_export(q8)
    with pytest.raises(
        ExportNotFoundError, match="has no var_manifest.json.*pass the folder the export wrote"
    ):
        cellucid_export.read_export(q8 / "var")


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda m: "{not json", "it is not valid JSON"),
        (lambda m: [m], "it holds a list, not a JSON object"),
        (lambda m: {k: v for k, v in m.items() if k != "fields"}, "it has no fields"),
        (lambda m: m | {"n_points": "700"}, "n_points (the number of cells) is '700'"),
        (lambda m: m | {"_varSchema": m["_varSchema"] | {"dtype": "int8"}}, "_varSchema.dtype is 'int8'"),
        (
            lambda m: m | {"_varSchema": m["_varSchema"] | {"quantizationBits": 16}},
            "_varSchema.quantizationBits is 16; uint8 codes need 8",
        ),
        (lambda m: m | {"fields": [["CD79A", None, 1.0]]}, "gene 'CD79A' has the range [None, 1.0]"),
        (lambda m: m | {"fields": [["CD79A"]]}, 'fields[0] is ["CD79A"], not [id, min, max]'),
        (lambda m: m | {"fields": m["fields"] + m["fields"][:1]}, "gene 'CD79A' is listed twice"),
        (
            lambda m: m | {"_varSchema": m["_varSchema"] | {"pathPattern": "../{key}"}},
            "_varSchema.pathPattern is '../{key}', not a file name inside",
        ),
    ],
)
def test_damaged_manifest(q8, edit, why):
    p = q8 / "var_manifest.json"
    new = edit(json.loads(p.read_text()))
    p.write_text(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(ExportReadError) as info:
        cellucid_export.read_export(q8)
    msg = str(info.value)
    assert msg.startswith(f"var_manifest.json in {q8} cannot be read: {why}"), msg
    assert f"`cellucid-export validate {q8}` lists every problem" in msg


def test_good_exports_still_read(exports, pbmc_master):
    for ex in map(cellucid_export.read_export, exports.values()):
        source = pbmc_master.raw[:, "CD79A"].X.toarray().ravel()
        assert np.abs(ex.gene("CD79A") - source).max() <= ex.step("CD79A") / 2 + 1e-6


def test_cli_inspect_damaged_export_prints_one_line(q8, tmp_path, capsys):
    f = q8 / "var" / "CD79A.values.u8.gz"
    f.write_bytes(f.read_bytes()[:50])
    assert main(["inspect", str(q8), "--gene", "CD79A"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "error: Gene 'CD79A' cannot be read: var/CD79A.values.u8.gz"
    )
    assert main(["inspect", str(tmp_path / "missing_dir")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing_dir does not exist" in err


def test_an_export_replaced_after_opening_is_not_read_with_the_old_ranges(pbmc, tmp_path):
    target = tmp_path / "out"
    pbmc.cellucid.export(target, genes=["CD79A", "MS4A1"], progress=False)
    opened = cellucid_export.read_export(target)
    opened.gene("CD79A")
    pbmc.raw.X.data *= 3  # other values, other ranges
    pbmc.cellucid.export(target, genes=["CD79A", "MS4A1"], overwrite=True, progress=False)
    with pytest.raises(cellucid_export.errors.ExportReadError, match="changed since it was opened"):
        opened.gene("CD79A")
    fresh = cellucid_export.read_export(target).gene("CD79A")
    np.testing.assert_allclose(fresh, pbmc.raw[:, "CD79A"].X.toarray().ravel(), atol=fresh.max() / 254)


def test_an_export_opened_by_a_relative_path_reads_after_a_change_of_folder(pbmc, tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    pbmc.cellucid.export("out", genes=["CD79A"], progress=False)
    ex = cellucid_export.read_export("out")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert ex.gene("CD79A").shape == (700,)  # not "changed since it was opened"
