"""The size guard, and exports that fail: the target is either complete or untouched."""

from __future__ import annotations

import errno
import os
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


def test_guard_refuses_before_writing(scrna, tmp_path):
    with pytest.raises(errors.ExportTooLargeError) as e:
        scrna.cellucid.export(tmp_path / "out", max_bytes=10_000, progress=False)
    msg = str(e.value)
    assert "36.00 KB" in msg and "max_bytes=10.00 KB" in msg  # 300 cells x 120 genes x 1 byte
    assert "uint8" in msg and "float32" in msg  # the size table
    assert "fewer genes" in msg and "var_quantization=8" in msg and "max_bytes=None" in msg
    assert list(tmp_path.iterdir()) == []
    # The guard can be turned off or raised.
    scrna.cellucid.export(tmp_path / "a", max_bytes=None, progress=False)
    scrna.cellucid.export(tmp_path / "b", max_bytes="1MB", progress=False)


def test_guard_default_refuses_an_atlas(scrna):
    from cellucid_export.plan import ExportPlan, check_plan

    atlas = ExportPlan(n_cells=1_000_000, n_genes=20_000, var_quantization=None, compression=6)
    assert atlas.payload_bytes == 80 * 10**9  # the seed's 80 GB
    with pytest.raises(errors.ExportTooLargeError, match="80.00 GB"):
        check_plan(atlas, "exports/atlas", cellucid_export.DEFAULT_MAX_BYTES)


def test_guard_checks_free_space(scrna, tmp_path, monkeypatch):
    monkeypatch.setattr("cellucid_export.plan._free_bytes", lambda p: 1000)
    with pytest.raises(errors.ExportTooLargeError, match="only 1.00 KB is free"):
        scrna.cellucid.export(tmp_path / "out", max_bytes=None, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_target_needs_overwrite_and_is_replaced_whole(scrna, tmp_path):
    target = tmp_path / "out"
    scrna.cellucid.export(target, genes=["G1", "G2"], progress=False)
    before = folder_digest(target)
    with pytest.raises(errors.ExportExistsError, match="overwrite=True"):
        scrna.cellucid.export(target, genes=["G3"], progress=False)
    assert folder_digest(target) == before
    (target / "stray.txt").write_text("from an older export")
    scrna.cellucid.export(target, genes=["G3"], compression=None, overwrite=True, progress=False)
    files = sorted(folder_digest(target))
    assert "var/G3.values.u8" in files and "var_manifest.json" in files and "points_2d.bin" in files
    assert not any(
        f.endswith(".gz") or f.startswith("var/G1") or f == "stray.txt" for f in files
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


def test_disk_full_is_explained(scrna, tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "write_payloads", full)
    with pytest.raises(OSError, match="disk holding .* is full; nothing was written"):
        scrna.cellucid.export(tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


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
        cellucid_export.CellucidExportWarning, match=r"2 genes hold \+/-Inf or only NaN.*G1.*G2"
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
