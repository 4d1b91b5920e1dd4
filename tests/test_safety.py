"""The size guard, and exports that fail: the target is either complete or untouched."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
from tests.conftest import folder_digest, leftovers, make_scrna

import cellucid_export
from cellucid_export import errors, export, writer
from cellucid_export.cli import main


def test_guard_refuses_before_writing(scrna, tmp_path):
    with pytest.raises(errors.ExportTooLargeError) as e:
        scrna.cellucid.export(tmp_path / "out", max_bytes=10_000, progress=False)
    msg = str(e.value)
    assert "36.00 KB" in msg and "max_bytes=10.00 KB" in msg  # 300 cells x 120 genes x 1 byte
    assert "uint8" in msg and "float32" in msg  # the size table
    # Only levers that change the size before compression, and not the 8 bits this export already has.
    assert "fewer genes" in msg and "max_bytes=None" in msg
    assert "var_quantization=8" not in msg.split("\n")[-1] and "compression" not in msg.split("\n")[-1]
    with pytest.raises(errors.ExportTooLargeError, match=r"use 8-bit quantization \(var_quantization=8\)"):
        scrna.cellucid.export(tmp_path / "out", max_bytes=10_000, var_quantization=16, progress=False)
    assert list(tmp_path.iterdir()) == []
    # The guard can be turned off or raised.
    scrna.cellucid.export(tmp_path / "a", max_bytes=None, progress=False)
    scrna.cellucid.export(tmp_path / "b", max_bytes="1MB", progress=False)


def test_guard_default_refuses_an_atlas(scrna):
    from cellucid_export.plan import ExportPlan, check_plan

    atlas = ExportPlan(n_cells=1_000_000, n_genes=20_000, var_quantization=None, compression=6)
    assert atlas.payload_bytes == 80 * 10**9  # the seed's 80 GB
    with pytest.raises(errors.ExportTooLargeError, match="80.00 GB"):
        check_plan(atlas, cellucid_export.DEFAULT_MAX_BYTES)


def _small_disk(monkeypatch, free: int, files: int = 10**9):
    """Make the target's disk look like it has ``free`` bytes (in 4 KB blocks) and ``files`` inodes left."""
    monkeypatch.setattr("cellucid_export.plan._disk_stats", lambda path: (free // 4096 * 4096, 4096, files))


def test_guard_checks_free_space(scrna, tmp_path, monkeypatch):
    _small_disk(monkeypatch, 4096)
    with pytest.raises(errors.ExportTooLargeError, match="only 4.10 KB is free") as e:
        scrna.cellucid.export(tmp_path / "out", max_bytes=None, progress=False)
    assert "With gzip, measured on 64 genes, it would still need about" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_guard_counts_whole_disk_blocks_and_cell_data(tmp_path, monkeypatch):
    """Small files take a whole block each, and the cell data counts: 120 genes of 300 cells are 36 KB
    before compression, but 120 files of 4 KB on disk, plus the points and 40 obs columns."""
    a = make_scrna(n_cells=300, n_genes=120)
    for i in range(40):
        a.obs[f"score{i}"] = np.random.default_rng(i).random(a.n_obs)
    res = a.cellucid.export(tmp_path / "free", compression=None, progress=False)
    on_disk = sum(-(-p.stat().st_size // 4096) * 4096 for p in res.path.rglob("*") if p.is_file())
    assert on_disk > 4 * res.plan.payload_bytes
    _small_disk(monkeypatch, on_disk - 4096)
    with pytest.raises(errors.ExportTooLargeError, match=r"of cell data") as e:
        a.cellucid.export(tmp_path / "out", compression=None, progress=False)
    assert "compress the files (compression=6)" in str(e.value) and "obs_keys=" in str(e.value)
    assert not (tmp_path / "out").exists()
    # The check is an upper bound, but a close one.
    _small_disk(monkeypatch, int(on_disk * 1.05))
    a.cellucid.export(tmp_path / "out", compression=None, progress=False)


def test_guard_lets_a_compressed_export_through_when_gzip_fits(scrna, tmp_path, monkeypatch):
    """Too big for the disk before compression, but not after: measured on a sample, it goes ahead."""
    with warnings.catch_warnings():  # random barcodes repeat among 20,000 cells
        warnings.simplefilter("ignore", UserWarning)
        a = make_scrna(n_cells=20_000, n_genes=200, density=0.05)
    raw = 200 * 20_000
    _small_disk(monkeypatch, raw // 2)
    with pytest.warns(
        errors.CellucidExportWarning,
        match=r"gzip brings the gene files to about .* \(measured on 64 genes\), so it goes",
    ):
        res = a.cellucid.export(tmp_path / "out", embeddings=False, progress=False)
    on_disk = sum(-(-p.stat().st_size // 4096) * 4096 for p in res.path.rglob("*") if p.is_file())
    assert on_disk < raw // 2  # it did fit
    ex = cellucid_export.read_export(res.path)
    np.testing.assert_allclose(ex.gene("G3"), a[:, "G3"].X.toarray().ravel(), atol=ex.bounds("G3")[1] / 255)
    # Without compression the same export is refused.
    with pytest.raises(errors.ExportTooLargeError, match="is free on the disk"):
        a.cellucid.export(tmp_path / "plain", embeddings=False, compression=None, progress=False)
    assert not (tmp_path / "plain").exists()


def test_disk_stats_without_statvfs_and_with_huge_blocks(tmp_path, monkeypatch):
    """Windows has no statvfs: the free space comes from shutil. ZFS reports its record size (128 KiB) as the
    block: small files are counted in 4 KB blocks, not in records."""
    from types import SimpleNamespace

    from cellucid_export import plan

    free, block, files = plan._disk_stats(tmp_path)
    assert free > 0 and 512 <= block <= 4096 and (files is None or files > 0)
    with monkeypatch.context() as m:
        m.setattr(plan, "_HAS_STATVFS", False)
        free, block, files = plan._disk_stats(tmp_path)
        # (other programs may write meanwhile: the same free space within 100 MB)
        assert abs(free - shutil.disk_usage(tmp_path).free) < 10**8 and block == 4096 and files is None
    zfs = SimpleNamespace(f_bavail=10**6, f_frsize=131072, f_bsize=131072, f_files=0, f_favail=0)
    monkeypatch.setattr(plan.os, "statvfs", lambda path: zfs)
    assert plan._disk_stats(tmp_path) == (10**6 * 131072, 4096, None)


def test_guard_checks_the_number_of_files(scrna, tmp_path, monkeypatch):
    _small_disk(monkeypatch, 10**12, files=50)
    with pytest.raises(
        errors.ExportTooLargeError, match=r"has room for only 50 more \(its limit on the number of files"
    ):
        scrna.cellucid.export(tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_target_needs_overwrite_and_is_replaced_whole(scrna, tmp_path):
    target = tmp_path / "out"
    scrna.cellucid.export(target, genes=["G1", "G2"], progress=False)
    before = folder_digest(target)
    with pytest.raises(errors.ExportExistsError, match="overwrite=True"):
        scrna.cellucid.export(target, genes=["G3"], progress=False)
    assert folder_digest(target) == before
    (target / "var" / "OLD.values.f32").write_bytes(b"from an older export")
    scrna.cellucid.export(target, genes=["G3"], compression=None, overwrite=True, progress=False)
    files = sorted(folder_digest(target))
    assert "var/G3.values.u8" in files and "var_manifest.json" in files and "points_2d.bin" in files
    assert not any(
        f.endswith(".gz") or f.startswith("var/G1") or f == "var/OLD.values.f32" for f in files
    )  # no orphan
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failure_mid_export_leaves_nothing(tmp_path, monkeypatch, exc):
    a = make_scrna(n_cells=200, n_genes=60)
    target = tmp_path / "out"
    calls = {"n": 0}
    real = writer.write_payloads

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # after two blocks of files were written
            raise exc
        return real(*args, **kw)

    monkeypatch.setattr(export, "write_payloads", flaky)
    with pytest.raises(type(exc)):
        a.cellucid.export(target, memory_budget=6_000, progress=False)
    assert calls["n"] == 3
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_old_export_when_overwriting(scrna, tmp_path, monkeypatch):
    target = tmp_path / "out"
    scrna.cellucid.export(target, genes=["G1"], progress=False)
    before = folder_digest(target)
    monkeypatch.setattr(
        export, "write_json", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error"))
    )
    with pytest.raises(OSError, match="I/O error"):
        scrna.cellucid.export(target, overwrite=True, progress=False)
    assert folder_digest(target) == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("code", "said"), [(errno.ENOSPC, "is full"), (errno.EDQUOT, "is beyond your disk quota")]
)
def test_disk_full_is_explained(scrna, tmp_path, monkeypatch, code, said):
    def full(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(export, "write_payloads", full)
    with pytest.raises(errors.DiskFullError, match=f"disk holding .* {said} .*; nothing was written") as e:
        scrna.cellucid.export(tmp_path / "out", var_quantization=16, progress=False)
    assert list(tmp_path.iterdir()) == []
    # The advice names only levers the export does not use already: 16 bits, but gzip is on.
    assert "var_quantization=8" in str(e.value) and "compression=" not in str(e.value)


def test_sigterm_mid_export_cleans_up(tmp_path):
    # A real process, killed while it writes: the staging folder goes, no target appears.
    script = textwrap.dedent(f"""
        import time, sys
        sys.path.insert(0, {os.getcwd()!r})
        import cellucid_export
        from cellucid_export import export as ex
        from tests.conftest import make_scrna
        real = ex.write_payloads
        def slow(*a, **k):
            print("writing", flush=True)
            time.sleep(0.5)
            return real(*a, **k)
        ex.write_payloads = slow
        make_scrna(200, 60).cellucid.export({str(tmp_path / "out")!r}, memory_budget=20_000, progress=False)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    assert any(".staging-" in p.name for p in tmp_path.iterdir())
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert list(tmp_path.iterdir()) == []


def test_float32_warns_about_inf_and_all_nan(tmp_path):
    a = make_scrna(n_cells=50, n_genes=6)
    x = a.X.toarray()
    x[:, 1] = np.nan
    x[4, 2] = np.inf
    x[5, 3] = np.nan
    a.X = x
    with pytest.warns(
        cellucid_export.CellucidExportWarning, match=r"2 genes with \+/-Inf or only NaN.*G1.*G2"
    ):
        res = a.cellucid.export(tmp_path / "f32", layer="X", var_quantization=None, progress=False)
    assert set(res.nonfinite_genes) == {"G1", "G2", "G3"}
    ex = cellucid_export.read_export(res.path)
    np.testing.assert_array_equal(ex.gene("G2"), x[:, 2])  # Inf written as-is
    assert np.isnan(ex.gene("G1")).all()
    # 8-bit: marked missing, no warning (the viewer shows them as missing).
    with warnings.catch_warnings():
        warnings.simplefilter("error", cellucid_export.CellucidExportWarning)
        res8 = a.cellucid.export(tmp_path / "q8", layer="X", progress=False)
    ex8 = cellucid_export.read_export(res8.path)
    assert np.isnan(ex8.gene("G1")).all() and ex8.bounds("G1") == (0.0, 1.0)
    assert np.isnan(ex8.gene("G2")[4]) and np.isfinite(np.delete(ex8.gene("G2"), 4)).all()


@pytest.mark.parametrize("enabled", [True, False])
def test_the_cycle_collector_is_left_as_it_was(scrna, tmp_path, monkeypatch, enabled):
    """The export pauses Python's cycle collector while it runs; success or failure, it is then as before."""
    import gc

    seen = []
    real = export.write_genes
    monkeypatch.setattr(export, "write_genes", lambda *a, **k: seen.append(gc.isenabled()) or real(*a, **k))
    (gc.enable if enabled else gc.disable)()
    try:
        scrna.cellucid.export(tmp_path / "ok", progress=False)
        assert seen == [False]
        assert gc.isenabled() is enabled
        with pytest.raises(errors.MatrixChoiceError):
            scrna.cellucid.export(tmp_path / "bad", layer="no-such-layer", progress=False)
        assert gc.isenabled() is enabled
    finally:
        gc.enable()


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_a_failure_stops_the_reader_within_its_pass(tmp_path, monkeypatch, exc):
    """A failure (or Ctrl-C) while the matrix is being read does not wait for the pass to finish."""
    import threading

    from cellucid_export import sources

    a = make_scrna(n_cells=400, n_genes=60)
    monkeypatch.setattr(sources, "READ_CHUNK_NNZ", 20)  # about 100 read chunks
    started, chunks = threading.Event(), []
    real_runs = sources.StreamedCSR._row_runs

    def slow_runs(self, part, cancel=None):
        for run in real_runs(self, part, cancel):
            chunks.append(1)
            started.set()
            time.sleep(0.01)
            yield run

    def failing_write(*args, **kwargs):
        assert started.wait(5)
        raise exc  # while the statistics pass is still running

    monkeypatch.setattr(sources.StreamedCSR, "_row_runs", slow_runs)
    monkeypatch.setattr(export, "write_genes", failing_write)
    with pytest.raises(type(exc)):
        a.cellucid.export(tmp_path / "out", progress=False, n_jobs=1)
    assert list(tmp_path.iterdir()) == []
    whole_pass = sources.StreamedCSR(
        {"data": a.X.data, "indices": a.X.indices, "indptr": a.X.indptr}, a.shape
    )._parts(1)[0]
    assert 0 < len(chunks) < len(whole_pass)  # stopped within the pass
    assert not [t for t in threading.enumerate() if t.name.startswith("cellucid-export")]


# ------------------------------------------------------------------------------------------------
# overwrite=True replaces only an empty folder or a previous export; the target's folder is checked
# before anything is written.


def test_overwrite_refuses_a_folder_that_is_not_an_export(tmp_path):
    a = make_scrna(n_cells=60, n_genes=8)
    work = tmp_path / "work"
    work.mkdir()
    a.write_h5ad(work / "x.h5ad")
    (work / "analysis.ipynb").write_text("keep")
    before = folder_digest(work)
    with pytest.raises(errors.OverwriteRefusedError) as e:
        a.cellucid.export(work, overwrite=True, progress=False)
    assert isinstance(e.value, errors.ExportExistsError) and isinstance(e.value, FileExistsError)
    msg = str(e.value)
    assert str(work) in msg and "does not look like a cellucid export" in msg
    assert "'analysis.ipynb', 'x.h5ad'" in msg and "exports/<dataset name>" in msg
    assert "delete the folder yourself" in msg
    assert folder_digest(work) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"] and leftovers(work) == []
    # Without overwrite the message does not send the user to overwrite=True.
    with pytest.raises(errors.ExportExistsError, match="overwrite=True would not replace") as e:
        a.cellucid.export(work, progress=False)
    assert not isinstance(e.value, errors.OverwriteRefusedError)
    assert folder_digest(work) == before


def test_export_h5ad_overwrite_refuses_the_folder_that_holds_the_input(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    make_scrna(n_cells=60, n_genes=8).write_h5ad(proj / "data" / "x.h5ad")
    (proj / "notes.txt").write_text("keep")
    before = folder_digest(proj)
    with pytest.raises(errors.OverwriteRefusedError, match=r"holds 'data/', 'notes.txt'"):
        cellucid_export.export_h5ad(proj / "data" / "x.h5ad", proj, overwrite=True, progress=False)
    assert folder_digest(proj) == before and leftovers(tmp_path) == []
    # The command line, run from the folder that holds the .h5ad: one line, exit status 2.
    (proj / "data" / "analysis.ipynb").write_text("keep")
    before = folder_digest(proj)
    monkeypatch.chdir(proj / "data")
    assert main(["export", "x.h5ad", ".", "--overwrite", "--no-progress"]) == 2
    assert folder_digest(proj) == before and leftovers(proj) == []


def test_overwrite_refuses_an_export_with_foreign_files_inside(scrna, tmp_path):
    target = tmp_path / "out"
    scrna.cellucid.export(target, genes=["G1"], progress=False)
    (target / "var" / "notes.txt").write_text("keep")
    before = folder_digest(target)
    with pytest.raises(errors.OverwriteRefusedError, match="'var/notes.txt'"):
        scrna.cellucid.export(target, overwrite=True, progress=False)
    assert folder_digest(target) == before
    # Payload folders without any manifest are not an export either.
    other = tmp_path / "other"
    (other / "var").mkdir(parents=True)
    (other / "var" / "A.values.u8").write_bytes(b"x")
    with pytest.raises(errors.OverwriteRefusedError, match="holds 'var/'"):
        scrna.cellucid.export(other, overwrite=True, progress=False)
    assert (other / "var" / "A.values.u8").read_bytes() == b"x"


def test_overwrite_replaces_a_previous_export_and_an_empty_folder(scrna, tmp_path):
    target = tmp_path / "out"
    scrna.cellucid.export(target, genes=["G1", "G2"], layout="index", progress=False)
    (target / ".DS_Store").write_bytes(b"Finder")  # left by browsing the folder: not the user's data
    res = scrna.cellucid.export(target, genes=["G3"], overwrite=True, progress=False)
    assert cellucid_export.read_export(res.path).gene_ids == ["G3"]
    assert ".DS_Store" not in folder_digest(target)
    # A genes-only export (no embedding) is recognised too.
    genes_only = make_scrna(n_cells=60, n_genes=8)
    del genes_only.obsm["X_umap"]
    with pytest.warns(cellucid_export.CellucidExportWarning, match="not viewer-openable"):
        genes_only.cellucid.export(tmp_path / "g", progress=False)
    assert sorted(folder_digest(tmp_path / "g"))[-1] == "var_manifest.json"
    scrna.cellucid.export(tmp_path / "g", genes=["G4"], overwrite=True, progress=False)
    assert cellucid_export.read_export(tmp_path / "g").gene_ids == ["G4"]
    # An empty folder, made beforehand.
    (tmp_path / "empty").mkdir()
    scrna.cellucid.export(tmp_path / "empty", genes=["G5"], overwrite=True, progress=False)
    assert cellucid_export.read_export(tmp_path / "empty").gene_ids == ["G5"]
    assert leftovers(tmp_path) == []


def test_overwrite_refuses_the_working_directory(scrna, tmp_path, monkeypatch):
    target = tmp_path / "out"
    scrna.cellucid.export(target, genes=["G1"], progress=False)
    before = folder_digest(target)
    monkeypatch.chdir(target)
    with pytest.raises(errors.OverwriteRefusedError, match="the folder you are working in") as e:
        scrna.cellucid.export(".", overwrite=True, progress=False)
    assert str(e.value).startswith(f"{target} is the folder you are working in (or holds it)")
    monkeypatch.chdir(target / "var")  # a folder above the working directory
    with pytest.raises(errors.OverwriteRefusedError, match="the folder you are working in"):
        scrna.cellucid.export(target, overwrite=True, progress=False)
    assert folder_digest(target) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("below", ["sub", "a/b/sub"])
def test_a_file_above_the_target_is_explained(scrna, tmp_path, below):
    data = tmp_path / "syn.h5ad"
    data.write_bytes(b"not a folder")
    target = data / below
    with pytest.raises(errors.TargetParentNotFolderError) as e:
        scrna.cellucid.export(target, progress=False)
    assert isinstance(e.value, NotADirectoryError) and isinstance(e.value, errors.CellucidExportError)
    msg = str(e.value)
    assert f"Cannot create the export folder {target}: {data} is a file, not a folder" in msg
    assert "exports/<dataset name>" in msg and ".staging-" not in msg
    assert list(tmp_path.iterdir()) == [data] and data.read_bytes() == b"not a folder"


def _deny_writing(monkeypatch, folder):
    """Make ``folder`` look unwritable: tests run as root, where permission bits do not stop writes."""
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: os.fspath(p) != str(folder) and real(p, mode, **kw)
    )


@pytest.mark.parametrize("below", ["out", "x/y/out"])
def test_an_unwritable_parent_is_explained(scrna, tmp_path, monkeypatch, below):
    ro = tmp_path / "ro"
    ro.mkdir()
    _deny_writing(monkeypatch, ro)
    target = ro / below
    with pytest.raises(errors.TargetNotWritableError) as e:
        scrna.cellucid.export(target, progress=False)
    assert isinstance(e.value, PermissionError) and isinstance(e.value, errors.CellucidExportError)
    msg = str(e.value)
    assert f"Cannot create the export folder {target}: you do not have permission to write in {ro}." in msg
    assert "ask the owner of that folder for write access" in msg and ".staging-" not in msg
    assert list(tmp_path.iterdir()) == [ro] and list(ro.iterdir()) == []


def test_a_permission_error_while_creating_the_folder_names_the_target(scrna, tmp_path, monkeypatch):
    # os.access can say yes where writing is still refused (a network disk that maps root to nobody).
    import pathlib

    real_mkdir = pathlib.Path.mkdir

    def refuse(self, *a, **k):
        if ".staging-" in self.name:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
    handler = signal.getsignal(signal.SIGTERM)
    target = tmp_path / "a" / "b" / "out"
    with pytest.raises(errors.TargetNotWritableError) as e:
        scrna.cellucid.export(target, progress=False)
    assert str(e.value).startswith(f"Cannot create the export folder {target}:")
    assert ".staging-" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # the folders made above the target are gone too
    assert signal.getsignal(signal.SIGTERM) == handler


def test_a_failed_export_removes_the_folders_it_made_above_the_target(tmp_path, monkeypatch):
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "keep.txt").write_text("keep")
    monkeypatch.setattr(export, "write_payloads", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        make_scrna(n_cells=60, n_genes=8).cellucid.export(
            tmp_path / "exports" / "new" / "pbmc", progress=False
        )
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["exports", "keep.txt"]


def test_ctrl_c_while_the_staging_folder_is_made_leaves_nothing(scrna, tmp_path, monkeypatch):
    import pathlib

    real_mkdir = pathlib.Path.mkdir

    def then_interrupt(self, *a, **k):
        real_mkdir(self, *a, **k)
        if ".staging-" in self.name:
            raise KeyboardInterrupt

    monkeypatch.setattr(pathlib.Path, "mkdir", then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        scrna.cellucid.export(tmp_path / "new" / "sub" / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("when", ["moving", "removing"])
def test_ctrl_c_while_publishing_waits_for_the_swap_and_the_removal(scrna, tmp_path, monkeypatch, when):
    """Between moving the old export aside and removing it, Ctrl-C waits: no missing target, no half-removed
    old folder. The export is complete when the interrupt is raised, and the error says so."""
    target = tmp_path / "out"
    scrna.cellucid.export(target, genes=["G1"], progress=False)
    real_replace, real_rmtree = os.replace, writer.shutil.rmtree

    def replace(src, dst):
        real_replace(src, dst)
        if when == "moving" and ".old-" in str(dst):
            signal.raise_signal(signal.SIGINT)  # right after the old export went aside

    def rmtree(path, *a, **k):
        if when == "removing" and ".old-" in str(path):
            signal.raise_signal(signal.SIGINT)
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(writer.os, "replace", replace)
    monkeypatch.setattr(writer.shutil, "rmtree", rmtree)
    with pytest.raises(
        writer.InterruptedAfterPublish, match=f"after the export was complete: {target} holds it"
    ):
        scrna.cellucid.export(target, genes=["G2", "G3"], overwrite=True, progress=False)
    assert cellucid_export.read_export(target).gene_ids == ["G2", "G3"]
    assert cellucid_export.validate(target) == []
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("dangling", [True, False])
def test_a_link_at_the_target_is_never_replaced(scrna, tmp_path, dangling):
    elsewhere = tmp_path / "elsewhere"
    if not dangling:
        scrna.cellucid.export(elsewhere, genes=["G1"], progress=False)
    link = tmp_path / "out"
    link.symlink_to(elsewhere)
    for overwrite in (False, True):
        with pytest.raises(errors.ExportExistsError, match="is a link .*Export into the folder it points to"):
            scrna.cellucid.export(link, genes=["G1"], overwrite=overwrite, progress=False)
        assert link.is_symlink()


def test_a_target_inside_a_previous_export_is_refused(scrna, tmp_path):
    prev = tmp_path / "prev"
    scrna.cellucid.export(prev, genes=["G1"], progress=False)
    before = folder_digest(prev)
    with pytest.raises(
        errors.InvalidParameterError, match=f"is inside the export {prev}: .*e.g. {tmp_path / 'sub'}"
    ):
        scrna.cellucid.export(prev / "sub", genes=["G1"], progress=False)
    assert folder_digest(prev) == before


def test_a_target_written_with_dots_is_where_it_points(scrna, tmp_path, monkeypatch):
    prev = tmp_path / "exports" / "pbmc"
    scrna.cellucid.export(prev, genes=["G1"], progress=False)
    res = scrna.cellucid.export(prev / ".." / "pbmc2", genes=["G1"], max_bytes=2**70, progress=False)
    assert (tmp_path / "exports" / "pbmc2" / "var_manifest.json").is_file() and res.n_genes == 1
    monkeypatch.chdir(prev)
    scrna.cellucid.export("../pbmc3", genes=["G1"], progress=False)
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["pbmc", "pbmc2", "pbmc3"]


def test_n_jobs_true_is_not_one(scrna, tmp_path):
    with pytest.raises(errors.InvalidParameterError, match="n_jobs must be a positive integer"):
        scrna.cellucid.export(tmp_path / "o", n_jobs=True, progress=False)


def test_a_read_only_disk_is_named_as_such(scrna, tmp_path, monkeypatch):
    real = os.statvfs

    class ReadOnly:
        def __init__(self, path):
            self.f_flag = real(path).f_flag | os.ST_RDONLY

    monkeypatch.setattr(writer.os, "statvfs", ReadOnly)
    with pytest.raises(errors.TargetNotWritableError, match="is on a read-only disk"):
        scrna.cellucid.export(tmp_path / "o", progress=False)


def test_a_signal_held_during_publishing_goes_to_the_handler_that_was_there(scrna, tmp_path, monkeypatch):
    """A program that ignores Ctrl-C keeps ignoring it: the held signal is not turned into an interrupt."""
    target = tmp_path / "out"
    scrna.cellucid.export(target, genes=["G1"], progress=False)
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if ".old-" in str(dst):
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(writer.os, "replace", replace)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        res = scrna.cellucid.export(target, genes=["G2"], overwrite=True, progress=False)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert cellucid_export.read_export(res.path).gene_ids == ["G2"] and leftovers(tmp_path) == []


def test_guard_counts_the_scratch_files_of_a_compressed_h5ad(tmp_path, monkeypatch):
    """A gzip-compressed CSR file is sorted into temporary files on the target's disk: they count, and
    the advice says how much memory_budget would avoid them."""
    a = make_scrna(n_cells=2000, n_genes=300)
    a.write_h5ad(tmp_path / "gz.h5ad", compression="gzip")
    options = dict(layer="X", compression=None, embeddings=False, memory_budget="1MB", progress=False)
    genes = 300 * 4096 + 7 * 4096  # 2,000 bytes in a block each, and the var manifest
    scratch = int(0.08 * 2000 * 300 * 12)
    _small_disk(monkeypatch, genes + scratch // 2)
    with pytest.raises(errors.ExportTooLargeError, match=r"of temporary files") as e:
        cellucid_export.export_h5ad(tmp_path / "gz.h5ad", tmp_path / "out", **options)
    assert "memory_budget=" in str(e.value) and not (tmp_path / "out").exists()
    # With enough memory, the matrix is sorted in memory and the same disk is enough.
    cellucid_export.export_h5ad(
        tmp_path / "gz.h5ad", tmp_path / "out", **{**options, "memory_budget": "64MB"}
    )


def test_a_failed_publish_puts_the_previous_export_back_or_says_where_it_is(scrna, tmp_path, monkeypatch):
    target = tmp_path / "out"
    scrna.cellucid.export(target, genes=["G1"], progress=False)
    before = folder_digest(target)
    real_replace = os.replace

    def replace(src, dst, fail_restore):
        if ".staging-" in str(src) or (fail_restore and ".old-" in str(src)):
            raise OSError(errno.EIO, "I/O error")
        real_replace(src, dst)

    monkeypatch.setattr(writer.os, "replace", lambda s, d: replace(s, d, False))
    with pytest.raises(OSError, match="I/O error"):
        scrna.cellucid.export(target, genes=["G2"], overwrite=True, progress=False)
    assert folder_digest(target) == before and leftovers(tmp_path) == []
    # Putting it back fails too: the error says where the previous export is, intact.
    monkeypatch.setattr(writer.os, "replace", lambda s, d: replace(s, d, True))
    with pytest.raises(
        errors.CellucidExportError, match=r"it is intact in .*\.out\.old-.*Rename that folder to out"
    ):
        scrna.cellucid.export(target, genes=["G2"], overwrite=True, progress=False)
    (old,) = tmp_path.glob(".out.old-*")
    assert folder_digest(old) == before


def test_an_old_export_that_cannot_be_removed_is_named(scrna, tmp_path, monkeypatch):
    target = tmp_path / "out"
    scrna.cellucid.export(target, genes=["G1"], progress=False)
    monkeypatch.setattr(
        writer.shutil, "rmtree", lambda path, *a, **k: None
    )  # e.g. a file held open on Windows
    with pytest.warns(
        errors.CellucidExportWarning, match=r"could not be removed completely: delete .*\.out\.old-"
    ):
        scrna.cellucid.export(target, genes=["G2"], overwrite=True, progress=False)
    assert cellucid_export.read_export(target).gene_ids == ["G2"]
