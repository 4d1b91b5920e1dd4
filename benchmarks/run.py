"""Time cellucid-export against the reference writer cellucid==0.0.9, and against the floor.

    python benchmarks/run.py --data S --case hvg-mem --case all-both --repeats 3
    python benchmarks/run.py --issue4            # the three M cases of issue 4
    python benchmarks/run.py --data M --case all-disk-c1 --no-ref

A case is ``<genes>-<mode>[-c<level>]``:

* genes: ``hvg`` (``var.highly_variable``: 2,000 genes on M) or ``all``;
* mode: ``mem`` (read the whole .h5ad with anndata, then ``adata.cellucid.export``), ``disk``
  (``cellucid_export.export_h5ad`` straight from the file) or ``both``;
* level: gzip level (default ``--compression``, 6).

For every case the reference, ``cellucid.prepare()`` from ``cellucid==0.0.9``, runs in memory on the
same matrix (``layers['log1p']``), the same genes and the same settings (8-bit, same gzip level).
All runs are interleaved (repeat 1 of every run, then repeat 2, ...), each in a fresh
subprocess, and the table shows medians. The "floor" row is the sequential read of the matrix (disk
cases only) plus the payload bytes over the codec's throughput measured with every core compressing
at once.

The reference lives in a throwaway virtualenv that is never a dependency of this project:

    python3 -m venv /tmp/cellucid-ref && /tmp/cellucid-ref/bin/pip install cellucid==0.0.9

and is found through ``--ref-python``, the ``CELLUCID_REF_PYTHON`` environment variable, or
``/work/refenv/v009/bin/python``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import filecmp
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_data  # noqa: E402
from _snapshot import snapshot  # noqa: E402

RESULTS = HERE / "results"
OUT_ROOT = RESULTS / "out"  # --out-root
WORKER = HERE / "_worker.py"
DEFAULT_REF_PYTHON = "/work/refenv/v009/bin/python"
REF_HINT = (
    "The reference writer cellucid==0.0.9 is not installed. Create a throwaway virtualenv for it:\n"
    "    python3 -m venv /tmp/cellucid-ref && /tmp/cellucid-ref/bin/pip install cellucid==0.0.9\n"
    "and pass --ref-python /tmp/cellucid-ref/bin/python (or set CELLUCID_REF_PYTHON), or run with --no-ref."
)
ISSUE4 = ["hvg-mem", "all-disk", "all-disk-c1"]
CASE_RE = re.compile(r"^(hvg|all)-(mem|disk|both)(?:-c([1-9]))?$")
TOOL_LABEL = {
    "ce-mem": "cellucid-export, in memory",
    "ce-disk": "cellucid-export, from disk",
    "ce-disk-j1": "cellucid-export, from disk, n_jobs=1",
    "ce-mem-j1": "cellucid-export, in memory, n_jobs=1",
    "ref": "cellucid 0.0.9 prepare(), in memory",
    "floor": "floor",
}


@dataclass
class Case:
    data: str
    genes: str
    mode: str
    level: int

    @property
    def name(self) -> str:
        return f"{self.genes}-{self.mode}-c{self.level}"


@dataclass
class Job:
    data: str
    tool: str
    genes: str
    level: int
    results: list[dict] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        return (self.data, self.tool, self.genes, self.level)

    @property
    def out(self) -> Path:
        return OUT_ROOT / self.data / f"{self.genes}-c{self.level}" / self.tool

    def median(self, k: str) -> float | None:
        vals = [r[k] for r in self.results if r.get(k) is not None]
        return statistics.median(vals) if vals else None


def parse_case(data: str, text: str, level: int) -> Case:
    m = CASE_RE.match(text)
    if not m:
        raise SystemExit(f"bad case {text!r}: use <hvg|all>-<mem|disk|both>[-c<level>], e.g. all-disk-c1")
    return Case(data, m.group(1), m.group(2), int(m.group(3) or level))


def check_ref_python(path: str) -> str:
    if not path or not os.path.exists(path):
        raise SystemExit(f"No reference interpreter at {path!r}.\n{REF_HINT}")
    r = subprocess.run(
        [path, "-c", "import importlib.metadata as m; print(m.version('cellucid'))"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise SystemExit(f"{path} cannot import cellucid:\n{r.stderr.strip()}\n{REF_HINT}")
    version = r.stdout.strip()
    if version != "0.0.9":
        print(f"warning: {path} has cellucid {version}, not 0.0.9", file=sys.stderr)
    return version


def dir_bytes(path: Path, only_genes: bool = True) -> int:
    """Bytes of the gene export (``var/`` and ``var_manifest.json``), or of the whole folder."""
    if not path.exists():
        return 0
    if only_genes:
        items = [path / "var_manifest.json", *((path / "var").iterdir() if (path / "var").exists() else [])]
    else:
        items = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in items if p.exists())


_WARM_UP = """
import tempfile, anndata as ad, numpy as np, scipy.sparse as sp, cellucid_export
x = sp.random(400, 60, density=0.08, format="csr", dtype=np.float32, random_state=0)
x.data = np.log1p(x.data * 10)
a = ad.AnnData(x)
a.var_names = [f"G{i}" for i in range(60)]
with tempfile.TemporaryDirectory() as d:
    a.write_h5ad(f"{d}/a.h5ad")
    a.write_h5ad(f"{d}/gz.h5ad", compression="gzip")
    for c in (1, 6):
        a.cellucid.export(f"{d}/m{c}", layer="X", compression=c, embeddings=False, progress=False)
        for f in ("a", "gz"):
            cellucid_export.export_h5ad(f"{d}/{f}.h5ad", f"{d}/{f}{c}", layer="X", compression=c,
                                        embeddings=False, progress=False)
"""


def warm_up(python: str, src: Path | None) -> None:
    """Compile the package's numba loops into their cache before any timing.

    A new snapshot (``--rev``) or a changed ``src/`` has an empty cache, and the first export would
    otherwise count several seconds of compilation.
    """
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    subprocess.run([python, "-c", _WARM_UP], env=env, cwd=str(HERE), check=True, capture_output=True)


def run_once(job: Job, python: str, layer: str, extra: dict, log_dir: Path, src: Path | None = None) -> dict:
    tool = job.tool.removesuffix("-j1")
    spec = {
        "tool": tool,
        "data": str(make_data.path_for(job.data)),
        "genes": job.genes,
        "compression": job.level,
        "layer": layer,
        "out": str(job.out),
        **extra,
    }
    if job.tool.endswith("-j1"):
        spec["n_jobs"] = 1
    if job.out.exists():  # removing the previous output is not part of the timing
        shutil.rmtree(job.out)
    job.out.parent.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    result_path = log_dir / f"{job.data}_{job.tool}_{job.genes}_c{job.level}.json"
    log_path = result_path.with_suffix(".log")
    result_path.unlink(missing_ok=True)
    env = dict(os.environ)
    if tool == "ref":  # nothing of this project may leak into the reference's interpreter
        env.pop("PYTHONPATH", None)
    elif src is not None:  # a snapshot of src/ at a fixed revision, ahead of the editable install
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [python, str(WORKER), json.dumps(spec), str(result_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(HERE),
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"{job.tool} on {job.data} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    res = json.loads(result_path.read_text())
    res["process_s"] = wall
    res["peak_rss_mb"] = usage.ru_maxrss * 1024 / 1e6  # Linux reports KiB
    if tool != "floor":
        res["out_mb"] = dir_bytes(job.out) / 1e6
        res["out_total_mb"] = dir_bytes(job.out, only_genes=False) / 1e6
    return res


def floor_seconds(job: Job, disk: bool, n_genes: int) -> dict:
    """The floor of issue 4 for a case: read (disk cases only) + payload / (codec speed on all cores).

    The codec speed is the one measured with every core compressing at once, which is below the
    one-core speed times the cores (shared caches and memory bandwidth). ``floor_io_s`` also counts
    creating one file per gene, measured on the output file system. File creation is kernel CPU time
    that does not run in parallel (one directory), so the bound is read + max((encode + create) /
    cores, create), with encode in CPU seconds at the all-cores speed per core.
    """
    read_s = job.median("read_s") if disk else 0.0
    cores = job.results[-1]["cores"]
    mbps = job.median("project_mb_per_s_all_cores") / cores
    n_cells = job.results[-1]["shape"][0]
    payload = n_cells * n_genes
    encode_cpu = payload / (mbps * 1e6)
    create_s = n_genes * job.median("create_ms_per_file") / 1e3
    return {
        "read_s": read_s,
        "encode_s": encode_cpu / cores,
        "floor_s": read_s + encode_cpu / cores,
        "create_s": create_s,
        "floor_io_s": read_s + max((encode_cpu + create_s) / cores, create_s),
        "payload_mb": payload / 1e6,
    }


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count()
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kb = int(next(ln for ln in fh if ln.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    return f"{cores} cores ({cpu}){mem}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def fmt(x, spec=".1f", none="–") -> str:
    return none if x is None else format(x, spec)


def compare_trees(a: Path, b: Path) -> tuple[bool, str]:
    """Whether two exports hold byte-identical ``var/`` folders and manifests."""
    fa = sorted(p.name for p in (a / "var").iterdir())
    fb = sorted(p.name for p in (b / "var").iterdir())
    if fa != fb:
        return (
            False,
            f"file names differ ({len(fa)} vs {len(fb)} files, {len(set(fa) ^ set(fb))} not in both)",
        )
    _, mismatch, errors = filecmp.cmpfiles(a / "var", b / "var", fa, shallow=False)
    same_manifest = filecmp.cmp(a / "var_manifest.json", b / "var_manifest.json", shallow=False)
    if mismatch or errors or not same_manifest:
        return False, (
            f"{len(mismatch)} of {len(fa)} gene files differ (e.g. {mismatch[:3]})"
            + ("" if same_manifest else "; var_manifest.json differs")
        )
    return True, f"{len(fa)} gene files and var_manifest.json byte-identical"


def main(argv=None) -> int:
    global OUT_ROOT
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument(
        "--data", action="append", help=f"dataset(s) from make_data.py ({', '.join(make_data.VARIANTS)})"
    )
    p.add_argument("--case", action="append", help="case(s), e.g. hvg-mem, all-disk, all-both, all-disk-c1")
    p.add_argument("--issue4", action="store_true", help=f"the cases of issue 4 on M: {', '.join(ISSUE4)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--compression", type=int, default=6, help="gzip level for cases without -c<level> (default 6)"
    )
    p.add_argument("--layer", default="log1p", help="matrix to export (default: layers['log1p'])")
    p.add_argument(
        "--memory-budget", default=None, help="memory_budget for cellucid-export (default: its default)"
    )
    p.add_argument("--n-jobs", type=int, default=None, help="n_jobs for cellucid-export (default: all cores)")
    p.add_argument(
        "--serial-check",
        action="store_true",
        help="also run cellucid-export from disk with n_jobs=1 and check its bytes are the same",
    )
    p.add_argument("--no-ref", action="store_true", help="skip the reference writer")
    p.add_argument(
        "--ref-from",
        default=None,
        help="reuse the reference runs recorded in an earlier run's .json (same machine and data) "
        "instead of running the reference again",
    )
    p.add_argument(
        "--ref-python",
        default=os.environ.get("CELLUCID_REF_PYTHON", DEFAULT_REF_PYTHON),
        help="interpreter with cellucid==0.0.9 (env CELLUCID_REF_PYTHON)",
    )
    p.add_argument(
        "--rev",
        default="worktree",
        help="git revision of src/ to benchmark (e.g. HEAD), extracted with git archive; default: the "
        "working tree as it is (the editable install)",
    )
    p.add_argument(
        "--out-root",
        default=str(OUT_ROOT),
        help="where the exports are written (default results/out). Point it at a tmpfs such as "
        "/dev/shm/cellucid-bench to take the file system's cost of creating files out",
    )
    p.add_argument("--output", default=str(RESULTS / "latest.md"), help="where to write the markdown table")
    args = p.parse_args(argv)

    OUT_ROOT = Path(args.out_root).absolute()
    datas = args.data or (["M"] if args.issue4 else ["S"])
    case_texts = (args.case or []) + (ISSUE4 if args.issue4 else [])
    if not case_texts:
        case_texts = ["hvg-mem", "all-both"]
    for d in datas:
        if d not in make_data.VARIANTS:
            p.error(f"unknown dataset {d!r}; choose from {list(make_data.VARIANTS)}")
        if not make_data.path_for(d).exists():
            p.error(f"{make_data.path_for(d)} does not exist: run  python benchmarks/make_data.py {d}")
    cases = [parse_case(d, c, args.compression) for d in datas for c in dict.fromkeys(case_texts)]
    reused: dict[tuple, list[dict]] = {}
    if args.ref_from:
        for j in json.loads(Path(args.ref_from).read_text())["jobs"]:
            if j["tool"] == "ref":
                reused[(j["data"], "ref", j["genes"], j["level"])] = j["results"]
        args.no_ref = True
    ref_version = None if args.no_ref else check_ref_python(args.ref_python)
    if reused:
        ref_version = (
            next(iter(reused.values()))[-1].get("version", "?") + f" (runs reused from {args.ref_from})"
        )
    src, rev = snapshot(args.rev)
    warm_up(sys.executable, src)

    jobs: dict[tuple, Job] = {}

    def add(data, tool, genes, level):
        j = Job(data, tool, genes, level)
        return jobs.setdefault(j.key, j)

    for c in cases:
        tools = {"mem": ["ce-mem"], "disk": ["ce-disk"], "both": ["ce-mem", "ce-disk"]}[c.mode]
        if args.serial_check:
            tools.append(tools[-1] + "-j1")
        for t in tools:
            add(c.data, t, c.genes, c.level)
        if not args.no_ref:
            add(c.data, "ref", c.genes, c.level)
        elif (c.data, "ref", c.genes, c.level) in reused:
            add(c.data, "ref", c.genes, c.level).results = reused[(c.data, "ref", c.genes, c.level)]
        add(c.data, "floor", "all", c.level)

    extra = {}
    if args.memory_budget:
        extra["memory_budget"] = args.memory_budget
    if args.n_jobs:
        extra["n_jobs"] = args.n_jobs
    log_dir = RESULTS / "logs"
    order = [j for j in jobs.values() if not j.results]  # reused reference runs are not run again
    t_bench = time.perf_counter()
    for r in range(args.repeats):
        for job in order:
            python = args.ref_python if job.tool == "ref" else sys.executable
            res = run_once(job, python, args.layer, extra if job.tool != "ref" else {}, log_dir, src)
            job.results.append(res)
            shown = res.get("export_s", res.get("read_s"))
            print(
                f"[{time.perf_counter() - t_bench:7.1f} s] repeat {r + 1}/{args.repeats} {job.data:8} "
                f"{job.tool:10} {job.genes}-c{job.level}: {shown:.2f} s, peak {res['peak_rss_mb']:.0f} MB",
                flush=True,
            )

    # ------------------------------------------------------------------------------- the table
    header = (
        "| data | case | tool | export s | load s | import s | process s | peak RSS MB | "
        "RSS after load MB | output MB | speed-up vs reference | × floor | × floor incl. file creation |"
    )
    lines = [header, "|" + "|".join(["---"] * (header.count("|") - 1)) + "|"]
    notes, checks = [], []
    for c in cases:
        n_genes = None
        ref = jobs.get((c.data, "ref", c.genes, c.level))
        fl = jobs[(c.data, "floor", "all", c.level)]
        tools = {"mem": ["ce-mem"], "disk": ["ce-disk"], "both": ["ce-mem", "ce-disk"]}[c.mode]
        if args.serial_check:
            tools.append(tools[-1] + "-j1")
        rows = [jobs[(c.data, t, c.genes, c.level)] for t in tools] + ([ref] if ref else [])
        n_genes = rows[0].results[-1]["n_genes"]
        floor = floor_seconds(fl, c.mode != "mem", n_genes)
        ref_s = ref.median("export_s") if ref else None
        for j in rows:
            e = j.median("export_s")
            speed = f"{ref_s / e:.1f}×" if ref_s and j.tool != "ref" else ("1.0×" if j.tool == "ref" else "–")
            lines.append(
                f"| {c.data} | {c.name} | {TOOL_LABEL[j.tool]} | {fmt(e, '.2f')} | {fmt(j.median('load_s'), '.2f')} "
                f"| {fmt(j.median('import_s'), '.2f')} | {fmt(j.median('process_s'), '.2f')} "
                f"| {fmt(j.median('peak_rss_mb'), ',.0f')} | {fmt(j.median('rss_after_load_mb'), ',.0f')} "
                f"| {fmt(j.median('out_mb'), ',.1f')} | {speed} | {e / floor['floor_s']:.2f} "
                f"| {e / floor['floor_io_s']:.2f} |"
            )
        lines.append(
            f"| {c.data} | {c.name} | floor: {'read ' + format(floor['read_s'], '.2f') + ' s + ' if c.mode != 'mem' else ''}"
            f"encode {floor['encode_s']:.2f} s (file creation {floor['create_s']:.2f} s) | {floor['floor_s']:.2f} "
            f"| | | | | | {floor['payload_mb']:,.0f} (raw) | | 1.00 | {floor['floor_io_s'] / floor['floor_s']:.2f} |"
        )
        if c.mode == "both":
            same, why = compare_trees(
                jobs[(c.data, "ce-mem", c.genes, c.level)].out,
                jobs[(c.data, "ce-disk", c.genes, c.level)].out,
            )
            checks.append(
                f"- {c.data} {c.name}: in-memory vs from-disk output: "
                f"{'IDENTICAL' if same else 'DIFFERENT'} ({why})"
            )
        if args.serial_check:
            par, ser = tools[-2], tools[-1]
            same, why = compare_trees(
                jobs[(c.data, ser, c.genes, c.level)].out, jobs[(c.data, par, c.genes, c.level)].out
            )
            checks.append(
                f"- {c.data} {c.name}: {TOOL_LABEL[ser]} vs all cores: "
                f"{'IDENTICAL' if same else 'DIFFERENT'} ({why})"
            )
    # Same matrix stored differently (S, S-dense, S-csc; M, M-csc): outputs should be identical.
    by_size: dict[tuple, list[Job]] = {}
    for j in jobs.values():
        if j.tool.startswith("ce-") and not j.tool.endswith("-j1"):
            by_size.setdefault((make_data.VARIANTS[j.data][0], j.tool, j.genes, j.level), []).append(j)
    for (_size, tool, genes, level), js in by_size.items():
        for other in js[1:]:
            same, why = compare_trees(js[0].out, other.out)
            checks.append(
                f"- {tool} {genes}-c{level}: {js[0].data} vs {other.data}: "
                f"{'IDENTICAL' if same else 'DIFFERENT'} ({why})"
            )
    for data, level in dict.fromkeys((c.data, c.level) for c in cases):
        fl = jobs[(data, "floor", "all", level)]
        last = fl.results[-1]
        notes.append(
            f"- {data}, gzip {level}: the codec (run encoder, {last['project_library']} for the search) "
            f"{fl.median('project_mb_per_s'):.0f} MB/s on one core, "
            f"{fl.median('project_mb_per_s_all_cores'):.0f} MB/s on all {last['cores']} at once "
            f"(ratio {last['project_ratio']:.2f}) on {last['sample_genes']} real quantized genes; with the standard "
            f"library's zlib for the search {fl.median('zlib_mb_per_s'):.0f} MB/s (ratio {last['zlib_ratio']:.2f}), plain zlib level "
            f"{level} {fl.median('zlib_plain_mb_per_s'):.0f} MB/s; sequential read of "
            f"{last['read_bytes'] / 1e6:,.0f} MB (data + indices) {fl.median('read_s'):.2f} s; creating a file "
            f"{fl.median('create_ms_per_file'):.2f} ms; {last['cores']} cores."
        )

    ce_version = next((j.results[-1]["version"] for j in jobs.values() if j.tool.startswith("ce-")), "?")
    text = "\n".join(
        [
            f"## Benchmark {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
            "",
            f"Machine: {machine()}. cellucid-export {ce_version} ({rev})"
            + (f", reference cellucid {ref_version}" if ref_version else "")
            + f". Median of {args.repeats} interleaved runs, each in a fresh process; 8-bit, layout 'name', "
            f"matrix layers['{args.layer}']; page cache warm; exports written to {OUT_ROOT}.",
            "",
            *lines,
            "",
            "`export s` is the export call alone (the compared number; for the disk path it includes reading the "
            "matrix); `load s` is anndata.read_h5ad for in-memory runs; `process s` is the whole subprocess "
            "including interpreter start-up and imports. Peak RSS is that of the whole process (os.wait4). "
            "`output MB` counts var/ and var_manifest.json only. Speed-up = reference export s / export s; "
            "× floor = export s / floor s (issue 4: sequential read of data + indices, disk cases only, plus "
            "payload / (codec MB/s with all cores compressing at once)); the last column's floor also counts creating one file per "
            "gene, which is serial kernel time: read + max((encode + create) / cores, create).",
            "",
            "Floor measurements:",
            *notes,
            *(["", "Checks:", *checks] if checks else []),
            "",
        ]
    )
    print()
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    raw = out.with_suffix(".json")
    raw.write_text(
        json.dumps(
            {
                "argv": sys.argv[1:],
                "jobs": [
                    {"data": j.data, "tool": j.tool, "genes": j.genes, "level": j.level, "results": j.results}
                    for j in jobs.values()
                ],
            },
            indent=1,
        )
    )
    print(f"wrote {out} and {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
