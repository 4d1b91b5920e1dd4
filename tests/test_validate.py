"""validate() passes good exports and names what is wrong in tampered copies."""

from __future__ import annotations

import json
import shutil

import pytest

import cellucid_export
from cellucid_export.cli import main
from cellucid_export.codec import get_codec, gzip_decompress

GENES = ["CD79A", "MS4A1", "CST3", "NKG7"]


@pytest.fixture(scope="module")
def good(pbmc_master, tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    return {
        layout: pbmc_master.cellucid.export(d / layout, genes=GENES, layout=layout, progress=False).path
        for layout in ("name", "index")
    }


def edit_json(path, fn):
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


def tampered(good, tmp_path, layout="name"):
    out = tmp_path / "copy"
    shutil.copytree(good[layout], out)
    return out


@pytest.mark.parametrize("layout", ["name", "index"])
def test_good_exports_pass(good, layout):
    assert cellucid_export.validate(good[layout]) == []


def test_wrong_payload_length(good, tmp_path):
    out = tampered(good, tmp_path)
    f = out / "obs" / "n_counts.values.f32.gz"
    f.write_bytes(get_codec(6).encode(gzip_decompress(f.read_bytes())[:-4]))
    (problem,) = cellucid_export.validate(out)
    assert (
        problem
        == "obs/n_counts.values.f32.gz holds 2796 bytes after decompression, but 700 values of float32 are 2800 bytes."
    )


def test_extra_identity_key(good, tmp_path):
    out = tampered(good, tmp_path)
    edit_json(out / "dataset_identity.json", lambda d: d.update(colour="blue"))
    assert cellucid_export.validate(out) == [
        "dataset_identity.json has keys the format does not allow: 'colour'."
    ]


def test_duplicate_gene(good, tmp_path):
    out = tampered(good, tmp_path)
    edit_json(out / "var_manifest.json", lambda d: d["fields"].__setitem__(1, d["fields"][0]))
    problems = cellucid_export.validate(out)
    assert "var_manifest.json lists these genes more than once: 'CD79A'." in problems
    assert any("var/MS4A1.values.u8.gz" in p and "no manifest mentions" in p for p in problems)


def test_missing_file(good, tmp_path):
    out = tampered(good, tmp_path, "index")
    (out / "var" / "2.values.u8.gz").unlink()
    assert cellucid_export.validate(out) == ["var/2.values.u8.gz is missing."]
    (out / "points_2d.bin.gz").unlink()
    assert "points_2d.bin.gz is missing." in cellucid_export.validate(out)


def test_trailing_gzip_bytes_and_header_flags(good, tmp_path):
    out = tampered(good, tmp_path)
    p = out / "points_2d.bin.gz"
    data = p.read_bytes()
    p.write_bytes(data + data)
    assert cellucid_export.validate(out) == [
        "points_2d.bin.gz has "
        f"{len(data)} bytes after its gzip member (a second gzip member); the viewer reads one member only."
    ]
    p.write_bytes(data[:3] + b"\xe0" + data[4:])
    assert cellucid_export.validate(out) == ["points_2d.bin.gz has reserved gzip header flag bits set."]


def test_index_gap(good, tmp_path):
    out = tampered(good, tmp_path, "index")

    def gap(m):
        m["_categoricalFields"][0][0] = 9

    edit_json(out / "obs_manifest.json", gap)
    (out / "obs" / "0.codes.u8.gz").rename(out / "obs" / "9.codes.u8.gz")
    (out / "obs" / "0.outliers.f32.gz").rename(out / "obs" / "9.outliers.f32.gz")
    assert cellucid_export.validate(out) == [
        "obs_manifest.json obs fields: indices must be 0..7 with no gaps or repeats; missing 0."
    ]


def test_wrong_counts_and_field_order(good, tmp_path):
    out = tampered(good, tmp_path)
    edit_json(out / "dataset_identity.json", lambda d: d["stats"].update(n_genes=5, n_edges=1))
    problems = cellucid_export.validate(out)
    assert problems == [
        "dataset_identity.json says 5 genes but var_manifest.json lists 4.",
        "dataset_identity.json: stats.n_edges is 1 but the graph has 4996.",
    ]
    # cellucid 0.0.9 listed obs fields in column order; strict viewers refuse that.
    edit_json(out / "dataset_identity.json", lambda d: d["obs_fields"].insert(0, d["obs_fields"].pop(5)))
    assert any("continuous first, then categorical" in p for p in cellucid_export.validate(out))


def test_stray_file_and_wrong_compression_suffix(good, tmp_path):
    out = tampered(good, tmp_path)
    (out / "var" / "OLD.values.u8").write_bytes(b"x" * 700)
    assert cellucid_export.validate(out) == [
        f"{out} holds files no manifest mentions: 'var/OLD.values.u8'. Remove them or export again."
    ]


def test_cli_validate(good, tmp_path, capsys):
    assert main(["validate", str(good["name"])]) == 0
    assert "OK" in capsys.readouterr().out
    out = tampered(good, tmp_path)
    (out / "obs_manifest.json").unlink()
    assert main(["validate", str(out)]) == 1
    captured = capsys.readouterr()
    assert "problem:" in captured.out and "obs_manifest.json" in captured.out and "1 problem;" in captured.err


def test_export_refuses_to_publish_an_invalid_folder(scrna, tmp_path, monkeypatch):
    import cellucid_export.dataset as ds

    real = ds.identity
    monkeypatch.setattr(ds, "identity", lambda *a, **k: {**real(*a, **k), "extra": 1})
    with pytest.raises(cellucid_export.CellucidExportError, match=r"(?s)did not pass its own check.*'extra'"):
        scrna.cellucid.export(tmp_path / "o", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_shallow_gene_check_reads_only_the_envelope(good, tmp_path):
    out = tampered(good, tmp_path)
    gene = next((out / "var").iterdir())
    rel = f"var/{gene.name}"
    codes = gzip_decompress(gene.read_bytes())
    # One gene shortened by a byte: both checks see it (the shallow one through the gzip ISIZE).
    gene.write_bytes(get_codec(6).encode(codes[:-1]))
    assert any(rel in p and "699 bytes" in p for p in cellucid_export.validate(out, decode_genes=False))
    assert any(rel in p for p in cellucid_export.validate(out))
    # A corrupt deflate body with an intact envelope: only decoding sees it, which is why validate() decodes
    # by default; the export's own check (on files it just wrote) reads the envelope only.
    good_bytes = get_codec(6).encode(codes)
    gene.write_bytes(good_bytes[:10] + bytes(len(good_bytes) - 18) + good_bytes[-8:])
    assert cellucid_export.validate(out, decode_genes=False) == []
    assert any(rel in p and "corrupt" in p for p in cellucid_export.validate(out))


def test_shallow_check_lists_every_gene_and_reads_a_sample(pbmc_master, tmp_path, monkeypatch):
    import importlib

    v = importlib.import_module("cellucid_export.validate")

    out = pbmc_master.cellucid.export(tmp_path / "all", layer="raw", progress=False).path
    files = sorted((out / "var").iterdir())
    assert len(files) > 10 * v.ENVELOPE_SAMPLE
    opened = []
    real = v._Folder._envelope
    monkeypatch.setattr(v._Folder, "_envelope", lambda self, p, *a: (opened.append(p), real(self, p, *a)))
    assert cellucid_export.validate(out, decode_genes=False) == []
    assert v.ENVELOPE_SAMPLE <= len(opened) <= 2 * v.ENVELOPE_SAMPLE  # not the 765 genes
    files[7].unlink()
    assert any(
        f"var/{files[7].name} is missing" in p for p in cellucid_export.validate(out, decode_genes=False)
    )


# ------------------------------------------------------------------------------------------------
# Damaged folders: every problem is reported as a sentence, never raised.


def test_graph_beyond_the_identity_cell_count_is_reported(good, tmp_path):
    # A hand-edited n_cells below the graph's node indices made numpy raise a broadcast error.
    out = tampered(good, tmp_path)
    edit_json(out / "dataset_identity.json", lambda d: d["stats"].update(n_cells=5))
    problems = cellucid_export.validate(out)
    assert "connectivity_manifest.json: n_cells must be 5, got 700." in problems
    assert (
        "connectivity_manifest.json: every edge must have source < destination < 5 (each undirected edge once)."
        in problems
    )


def _json_paths(obj, pre=()):
    """Every value of a JSON document, by its path (the first two items of each list)."""
    yield pre
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _json_paths(v, (*pre, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:2]):
            yield from _json_paths(v, (*pre, i))


def _set(obj, path, value):
    if not path:
        return value
    cur = obj
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return obj


# Keys whose value the format leaves open (any JSON value, or null allowed).
FREE_KEYS = {"cellucid_data_version", "var_gene_id_column", "centroid_outlier_quantile"}


def _no_traceback(problems):
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)
    assert not any("could not be checked completely" in p for p in problems), problems


@pytest.mark.parametrize("layout", ["name", "index"])
def test_every_manifest_value_of_a_wrong_type_is_reported(good, tmp_path, layout):
    out = tampered(good, tmp_path, layout)
    for path in sorted(out.glob("*.json")):
        text = path.read_text()
        for where in _json_paths(json.loads(text)):
            for value in (None, -1, [[1]], {"a": 1}):
                edited = json.dumps(_set(json.loads(text), where, value))
                if json.loads(edited) == json.loads(text):
                    continue  # the value was already this (null, say)
                path.write_text(edited)
                for kwargs in ({}, {"decode_genes": False}, {"genes_only": True}):
                    problems = cellucid_export.validate(out, **kwargs)
                    _no_traceback(problems)
                # -1 is a fine category or bound; the other values are wrong wherever they go.
                if value != -1 and not (where and where[-1] in FREE_KEYS):
                    assert cellucid_export.validate(out), f"{path.name} {where} = {value!r} not reported"
                if path.name == "var_manifest.json":
                    try:
                        ex = cellucid_export.read_export(out)
                        for g in ex.gene_ids:
                            ex.gene(g)
                    except cellucid_export.CellucidExportError:
                        pass
        for broken in ("", "[1, 2]", "[" * 100_000, "\ufffd{"):
            path.write_text(broken)
            problems = cellucid_export.validate(out)
            _no_traceback(problems)
            assert any(p.startswith(path.name) for p in problems), (path.name, broken, problems)
        path.write_text(text)
    assert cellucid_export.validate(out) == []


def test_every_truncated_or_replaced_file_is_reported(good, tmp_path):
    out = tampered(good, tmp_path, "index")
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p.suffix != ".json"):
        rel = path.relative_to(out).as_posix()
        data = path.read_bytes()
        for damaged in (b"", data[:10], data[: len(data) // 2], data[:-1], b"not gzip at all" * 10):
            path.write_bytes(damaged)
            problems = cellucid_export.validate(out)
            _no_traceback(problems)
            assert any(rel in p for p in problems), (rel, len(damaged), problems)
            _no_traceback(cellucid_export.validate(out, decode_genes=False))
        path.write_bytes(data)


def test_unreadable_var_manifest_is_not_called_missing(good, tmp_path):
    out = tampered(good, tmp_path)
    (out / "var_manifest.json").write_text("{not json")
    problems = cellucid_export.validate(out)
    assert problems[0].startswith("var_manifest.json is not valid JSON (Expecting property name")
    assert not any("missing" in p or "no manifest mentions" in p for p in problems), problems
    (out / "var_manifest.json").write_text("[1, 2]")
    assert cellucid_export.validate(out) == ["var_manifest.json must hold a JSON object, not a list."]
    # The export's own check of a genes-only folder said "has no var_manifest.json" here.
    assert (
        cellucid_export.validate(out, genes_only=True)[0]
        == "var_manifest.json must hold a JSON object, not a list."
    )
    (out / "var_manifest.json").unlink()
    assert "dataset_identity.json says 4 genes but var_manifest.json is missing." in cellucid_export.validate(
        out
    )


def test_genes_only_hint_only_when_the_obs_files_are_absent(good, tmp_path):
    out = tampered(good, tmp_path)
    (out / "obs_manifest.json").write_text('{"_format": ')
    problems = cellucid_export.validate(out)
    assert problems[0].startswith("obs_manifest.json is not valid JSON")
    assert problems[1:] == [
        f"{out}: the viewer cannot open a folder whose obs_manifest.json cannot be read; export again."
    ]
    (out / "obs_manifest.json").unlink()
    assert cellucid_export.validate(out) == [
        f"{out} has no obs_manifest.json, so the viewer cannot open it (an export without an embedding holds "
        "genes only)."
    ]


def test_missing_folder(tmp_path):
    assert cellucid_export.validate(tmp_path / "nope") == [
        f"{tmp_path / 'nope'} does not exist; check the path."
    ]
