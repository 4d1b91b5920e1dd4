"""Where does an export spend its time? Stage timers around cellucid-export's pipeline.

    python benchmarks/profile_export.py --data M                 # all genes, from disk, gzip 6
    python benchmarks/profile_export.py --data M --compression 1 --n-jobs 1
    python benchmarks/profile_export.py --data M --cprofile prof.out   # plus cProfile (main thread)

The export runs unchanged; the functions of each stage are wrapped (monkeypatched in this process
only) to add up their wall and CPU time per thread:

  read      the gene-block reader (``GeneBlockSource.blocks``: h5py reads, index work, CSC build)
  quantize  ``quantize_block`` (bounds, codes, scatter into the dense payload)
  encode    ``Codec.encode`` (deflate + CRC), summed over the encoder threads
  write     ``write_payloads`` wall time in the consumer (encode + file writes + waiting for the pool)
  wait      time the consumer waits for the next quantized block (the reader/quantizer is behind)

Read and quantize run in the producer thread, encode/write in the pool, so stages overlap: the sum
of stage times can exceed the wall time. For a sampling profile of all threads use py-spy, e.g.
``py-spy record --idle -o prof.svg -- python benchmarks/profile_export.py --data M``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_data  # noqa: E402

if "--rev" in sys.argv and not os.environ.get("_CE_PROFILE_SNAPSHOT"):
    # Re-run this script with src/ of that revision first on the path.
    from _snapshot import snapshot

    src, _ = snapshot(sys.argv[sys.argv.index("--rev") + 1])
    if src is not None:
        env = dict(os.environ, _CE_PROFILE_SNAPSHOT="1")
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

import cellucid_export  # noqa: E402
from cellucid_export import codec as codec_mod  # noqa: E402
from cellucid_export import export as export_mod  # noqa: E402
from cellucid_export import sources as sources_mod  # noqa: E402
from cellucid_export import writer as writer_mod  # noqa: E402

_lock = threading.Lock()
TOTALS: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])  # wall, cpu, calls


def timed(name, fn):
    def wrapper(*a, **k):
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*a, **k)
        finally:
            dw, dc = time.perf_counter() - w0, time.thread_time() - c0
            with _lock:
                t = TOTALS[name]
                t[0] += dw
                t[1] += dc
                t[2] += 1

    return wrapper


def timed_iter(name, gen_fn):
    """Wrap a generator function: time spent producing each item counts as ``name``."""

    def wrapper(*a, **k):
        it = gen_fn(*a, **k)
        while True:
            w0, c0 = time.perf_counter(), time.thread_time()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                with _lock:
                    t = TOTALS[name]
                    t[0] += time.perf_counter() - w0
                    t[1] += time.thread_time() - c0
                    t[2] += 1
            yield item

    return wrapper


def _subclasses(cls):
    yield cls
    for sub in cls.__subclasses__():
        yield from _subclasses(sub)


def install() -> None:
    # The readers may change; wrap every reader class's own ``blocks`` (the producer side).
    for cls in set(_subclasses(sources_mod.GeneBlockSource)):
        if "blocks" in cls.__dict__:
            cls.blocks = timed_iter("read", cls.__dict__["blocks"])
    export_mod.quantize_block = timed("quantize", export_mod.quantize_block)
    codec_mod.Codec.encode = timed("encode", codec_mod.Codec.encode)
    export_mod.write_payloads = timed("write", export_mod.write_payloads)
    writer_mod.Prefetch.__next__ = timed("wait", writer_mod.Prefetch.__next__)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="M")
    p.add_argument("--genes", choices=["all", "hvg"], default="all")
    p.add_argument("--compression", type=int, default=6)
    p.add_argument("--n-jobs", type=int, default=None)
    p.add_argument("--memory-budget", default=None)
    p.add_argument("--layer", default="log1p")
    p.add_argument("--rev", default=None, help="git revision of src/ to profile (default: working tree)")
    p.add_argument(
        "--out-root",
        default=str(HERE / "results"),
        help="folder for the temporary export (e.g. /dev/shm to leave the disk out)",
    )
    p.add_argument("--cprofile", default=None, help="also write a cProfile of the main thread to this file")
    args = p.parse_args(argv)
    path = make_data.path_for(args.data)
    kwargs = dict(
        layer=args.layer,
        compression=args.compression,
        var_quantization=8,
        max_bytes=None,
        overwrite=True,
        progress=False,
    )
    if args.n_jobs:
        kwargs["n_jobs"] = args.n_jobs
    if args.memory_budget:
        kwargs["memory_budget"] = args.memory_budget
    if args.genes == "hvg":
        import h5py
        from anndata.io import read_elem

        with h5py.File(path, "r") as f:
            kwargs["genes"] = read_elem(f["var"])["highly_variable"].to_numpy(bool)
    install()
    out = Path(tempfile.mkdtemp(dir=args.out_root)) / "export"
    prof = cProfile.Profile() if args.cprofile else None
    c0 = time.process_time()
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    res = cellucid_export.export_h5ad(path, out, **kwargs)
    if prof:
        prof.disable()
        prof.dump_stats(args.cprofile)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    print(f"cellucid_export from {Path(cellucid_export.__file__).parent}")
    print(
        f"{args.data}: {res.n_genes} genes, gzip {args.compression}, {wall:.2f} s wall, {cpu:.2f} s CPU "
        f"(all threads), {res.bytes_written / 1e6:.0f} MB written"
    )
    print(f"{'stage':10} {'wall s':>8} {'cpu s':>8} {'calls':>7}")
    for name in ("read", "quantize", "encode", "write", "wait"):
        w, c, n = TOTALS.get(name, (0.0, 0.0, 0))
        print(f"{name:10} {w:8.2f} {c:8.2f} {n:7d}")
    import shutil

    shutil.rmtree(out.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
