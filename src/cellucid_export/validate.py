"""Check an export folder against the format, the way the viewer will read it.

:func:`validate` returns a list of problems, each a sentence naming the file and what is wrong;
an empty list means the viewer will open the folder. Both layouts are checked; which one a folder
uses is read from its manifests. Every export runs it on its staging folder before publishing.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .codec import gunzip_strict
from .dataset import CREATED_AT, DATASET_ID, MAX_CATEGORIES, index_dtype
from .quantize import MARKER, PAYLOAD_KINDS, STEPS
from .resolve import _show, name_layout_problems, safe_name
from .writer import values_schema

__all__ = ["validate"]

MAX_PAYLOAD = 512 * 2**20
MAX_MANIFEST = 64 * 2**20
_DTYPES = {"uint8": "<u1", "uint16": "<u2", "float32": "<f4"}
_BITS = {"uint8": 8, "uint16": 16}
IDENTITY_KEYS = ["version", "id", "name", "description", "created_at", "cellucid_data_version", "stats"]
IDENTITY_KEYS += ["embeddings", "obs_fields"]
IDENTITY_OPTIONAL = {"export_settings", "source", "vector_fields"}
STATS_KEYS = {"n_cells", "n_genes", "n_obs_fields", "n_categorical_fields", "n_continuous_fields"}
STATS_KEYS |= {"has_connectivity", "n_edges"}
SETTINGS_KEYS = {"compression", "var_quantization", "obs_continuous_quantization", "obs_categorical_dtype"}
VAR_KEYS = [
    "_format",
    "n_points",
    "var_gene_id_column",
    "compression",
    "quantization",
    "_varSchema",
    "fields",
]
OBS_KEYS = ["_format", "n_points", "centroid_outlier_quantile", "latent_key", "compression", "_obsSchemas"]
OBS_KEYS += ["_continuousFields", "_categoricalFields"]
GRAPH_KEYS = {"format", "n_cells", "n_edges", "max_neighbors", "index_bytes", "index_dtype", "sourcesPath"}
GRAPH_KEYS |= {"destinationsPath", "compression", "weightsPath", "weight_dtype", "weight_bytes"}


class _Folder:
    def __init__(self, path: Path, *, shallow_genes: bool = False):
        self.path = path
        self.problems: list[str] = []
        self.declared: set[str] = set()
        #: Manifests that exist but cannot be read: their problem is already reported, so later checks
        #: must not call them missing, nor the files they list strays.
        self.unreadable: set[str] = set()
        #: Check gene files by their gzip header, trailer and size only, without inflating them.
        self.shallow_genes = shallow_genes

    def add(self, msg: str) -> None:
        self.problems.append(msg)

    def json(self, name: str):
        p = self.path / name
        self.declared.add(name)
        if not p.is_file():
            return None
        self.unreadable.add(name)
        if p.stat().st_size > MAX_MANIFEST:
            self.add(f"{name} is larger than 64 MiB; the viewer refuses it.")
            return None

        def refuse(const):
            raise ValueError(f"non-standard JSON value {const}")

        try:
            text = p.read_bytes().decode("utf-8")
        except OSError as e:
            self.add(f"{name} cannot be read ({e.strerror or e}).")
            return None
        except UnicodeDecodeError as e:
            self.add(f"{name} is not valid JSON (not UTF-8 text: {e.reason} at byte {e.start}).")
            return None
        try:
            obj = json.loads(text, parse_constant=refuse)
        except ValueError as e:
            self.add(f"{name} is not valid JSON ({e}).")
            return None
        except RecursionError:
            # A damaged file of brackets nests deeper than Python's parser goes; no manifest nests so.
            self.add(f"{name} is not valid JSON (nested too deeply).")
            return None
        if not isinstance(obj, dict):
            self.add(f"{name} must hold a JSON object, not {_json_type(obj)}.")
            return None
        self.unreadable.discard(name)
        return obj

    def keys(self, obj: dict, name: str, required, optional=(), ordered=False) -> None:
        missing = [k for k in required if k not in obj]
        extra = [k for k in obj if k not in required and k not in optional]
        if missing:
            self.add(f"{name} lacks {_show(missing)}.")
        if extra:
            self.add(f"{name} has keys the format does not allow: {_show(extra)}.")
        if ordered and not missing and not extra and list(obj) != list(required):
            self.add(f"{name} keys are not in the order the format gives ({', '.join(required)}).")

    def suffix(self, rel: str, compression) -> bool:
        """The .gz rule: a payload's name ends in .gz exactly when the manifest says compression."""
        if rel.endswith(".gz") != bool(compression):
            self.add(
                f"{rel}: compression is {compression}, so its name must {'' if compression else 'not '}end in .gz."
            )
            return False
        return True

    def _envelope(self, p: Path, rel: str, size: int) -> None:
        """Header, trailer and length of a payload, without decoding it (for files we just wrote)."""
        if not rel.endswith(".gz"):
            if p.stat().st_size != size:
                self.add(f"{rel} holds {p.stat().st_size} bytes, but {size} are expected.")
            return
        if p.stat().st_size < 18:
            # Shorter than a gzip header and trailer: cut short (seeking back 4 bytes would fail).
            self.add(f"{rel} is a truncated gzip file ({p.stat().st_size} bytes).")
            return
        try:
            with open(p, "rb") as fh:
                head = fh.read(10)
                fh.seek(-4, os.SEEK_END)
                isize = struct.unpack("<I", fh.read(4))[0]
        except OSError as e:
            self.add(f"{rel} cannot be read ({e.strerror or e}).")
            return
        if len(head) < 10 or head[:3] != b"\x1f\x8b\x08" or head[3] & 0xE0:
            self.add(f"{rel} does not start with a valid gzip header.")
        elif isize != size & 0xFFFFFFFF:
            self.add(f"{rel} decodes to {isize} bytes (gzip ISIZE), but {size} are expected.")

    def payload(
        self, rel: str, dtype: str, count: int, compression, shallow: bool = False
    ) -> np.ndarray | None:
        """Read a declared payload; checks existence, the .gz rule, the gzip envelope and the length."""
        if not _inside(rel):
            # The viewer fetches files relative to the folder; it cannot reach this one.
            self.add(f"{rel!r} is not a path inside the export folder.")
            return None
        self.declared.add(rel)
        p = self.path / rel
        self.suffix(rel, compression)
        if not p.is_file():
            self.add(f"{rel} is missing.")
            return None
        if shallow:
            self._envelope(p, rel, count * np.dtype(dtype).itemsize)
            return None
        try:
            data = p.read_bytes()
        except OSError as e:
            self.add(f"{rel} cannot be read ({e.strerror or e}).")
            return None
        if rel.endswith(".gz"):
            data, problem = gunzip_strict(data)
            if problem:
                self.add(f"{rel} {problem}.")
                return None
        if len(data) > MAX_PAYLOAD:
            self.add(f"{rel} decodes to more than 512 MiB; the viewer refuses it.")
        dt = np.dtype(dtype)
        if len(data) != count * dt.itemsize:
            self.add(
                f"{rel} holds {len(data)} bytes after decompression, but {count:,} values of {dt.name} "
                f"are {count * dt.itemsize} bytes."
            )
            return None
        return np.frombuffer(data, dtype=dt)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _json_type(x) -> str:
    """What a JSON value is, in the words of the format ('a list', 'null'...)."""
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "true/false"
    if isinstance(x, int | float):
        return "a number"
    return {str: "text", list: "a list", dict: "an object"}.get(type(x), type(x).__name__)


def _inside(rel: str) -> bool:
    """A relative path that stays inside the export folder."""
    parts = rel.replace("\\", "/").split("/")
    return bool(rel) and not rel.startswith("/") and ":" not in parts[0] and ".." not in parts


def _num(x) -> bool:
    """A finite JSON number (integers of any size included)."""
    if isinstance(x, bool):
        return False
    return isinstance(x, int) or (isinstance(x, float) and math.isfinite(x))


def _layout_of(pattern: str) -> str | None:
    return "index" if "{index}" in pattern else "name" if "{key}" in pattern else None


def _check_codes(f: _Folder, rel: str, arr, bits: int, what: str) -> None:
    if arr is not None and ((arr > STEPS[bits]) & (arr != MARKER[bits])).any():
        f.add(f"{rel} holds codes above {STEPS[bits]} that are not the missing marker ({what}).")


def _check_bounds(f: _Folder, where: str, bounds, layout: str) -> None:
    if len(bounds) != 2 or not all(_num(b) for b in bounds):
        f.add(f"{where} needs finite min and max values.")
    elif bounds[0] > bounds[1] or (layout == "name" and bounds[0] == bounds[1]):
        rule = "min < max (a constant field is written max = min + 1)" if layout == "name" else "min <= max"
        f.add(f"{where} has min {bounds[0]} and max {bounds[1]}; the name layout needs {rule}.")


def _ints(xs: list) -> str:
    return ", ".join(map(str, xs[:5])) + (" ..." if len(xs) > 5 else "")


def _index_space(f: _Folder, where: str, indices: list, expect: int) -> None:
    if not all(_is_int(i) for i in indices):
        f.add(f"{where}: every index must be an integer.")
        return
    if sorted(indices) != list(range(expect)):
        gaps = sorted(set(range(expect)) - set(indices))
        dup = sorted(i for i, k in Counter(indices).items() if k > 1)
        f.add(
            f"{where}: indices must be 0..{expect - 1} with no gaps or repeats"
            + (f"; missing {_ints(gaps)}" if gaps else "")
            + (f"; repeated {_ints(dup)}" if dup else "")
            + (
                f"; out of range {_ints(sorted(set(indices) - set(range(expect))))}"
                if not gaps and not dup
                else ""
            )
            + "."
        )


# ------------------------------------------------------------------------------------------ var


def _check_var(f: _Folder, m: dict, n_cells: int | None) -> tuple[int, str | None, dict]:
    """Returns (genes, layout, facts)."""
    name = "var_manifest.json"
    f.keys(m, name, VAR_KEYS, ordered=True)
    facts = {"compression": m.get("compression"), "quantization": m.get("quantization")}
    schema = m.get("_varSchema")
    fields = m.get("fields")
    if not isinstance(schema, dict) or not isinstance(fields, list):
        f.add(f"{name} needs a _varSchema object and a fields list.")
        return 0, None, facts
    n = m.get("n_points")
    if not _is_int(n) or n < 1:
        f.add(f"{name}: n_points must be a positive integer.")
        return len(fields), None, facts
    if n_cells is not None and n != n_cells:
        f.add(f"{name} says {n} cells but the dataset has {n_cells}.")
    if m.get("_format") != "compact_v1":
        f.add(f"{name}: _format must be 'compact_v1'.")
    column = m.get("var_gene_id_column")
    if column is not None and not isinstance(column, str):
        f.add(f"{name}: var_gene_id_column must be the name of a var column (text) or null.")
    bits = m.get("quantization")
    comp = m.get("compression")
    if comp is not None and not (_is_int(comp) and 1 <= comp <= 9):
        f.add(f"{name}: compression must be 1..9 or null.")
    if bits not in (8, 16, None):
        f.add(f"{name}: quantization must be 8, 16 or null.")
        return len(fields), None, facts
    _, dtype = PAYLOAD_KINDS[bits]
    pattern = str(schema.get("pathPattern", ""))
    layout = _layout_of(pattern)
    want = values_schema("var", "{key}" if layout == "name" else "{index}", bits, comp, with_kind=True)
    if layout is None or schema != want:
        f.add(f"{name}: _varSchema must be {json.dumps(want)}, got {json.dumps(schema)}.")
        return len(fields), layout, facts
    width = (1 if layout == "name" else 2) + (2 if bits is not None else 0)
    ids: list = []
    indices: list = []
    genes: list[tuple[str, str]] = []
    for pos, entry in enumerate(fields):
        if not isinstance(entry, list) or len(entry) != width:
            f.add(f"{name}: fields[{pos}] must be a list of {width} values ({'[i, id' if layout == 'index' else '[id'}"
                  f"{', min, max' if bits else ''}]).")  # fmt: skip
            continue
        idx, gid, bounds = (pos, entry[0], entry[1:]) if layout == "name" else (entry[0], entry[1], entry[2:])
        ids.append(gid)
        indices.append(idx)
        if not isinstance(gid, str) or not gid.strip() or gid != gid.strip():
            f.add(
                f"{name}: fields[{pos}] has gene id {gid!r}; ids must be non-empty text without surrounding spaces."
            )
            continue
        if bits is not None:
            _check_bounds(f, f"{name} gene {gid!r}", bounds, layout)
        if not _is_int(idx):
            continue
        genes.append((pattern.replace("{index}", str(idx)).replace("{key}", safe_name(gid)), gid))

    def check_gene(job):
        # Each gene on its own collector: threads decode in parallel, problems keep the manifest order.
        rel, gid = job
        sub = _Folder(f.path)
        arr = sub.payload(rel, _DTYPES[dtype], n, comp, shallow=f.shallow_genes)
        if bits is not None:
            _check_codes(sub, rel, arr, bits, f"gene {gid!r}")
        return sub

    if f.shallow_genes:
        _check_written_genes(f, genes, comp, n * np.dtype(_DTYPES[dtype]).itemsize)
    else:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for sub in pool.map(check_gene, genes):
                f.problems += sub.problems
                f.declared |= sub.declared
    text_ids = [g for g in ids if isinstance(g, str)]
    dup = sorted(g for g, k in Counter(text_ids).items() if k > 1)
    if dup:
        f.add(f"{name} lists these genes more than once: {_show(dup)}.")
    if layout == "index":
        _index_space(f, f"{name} fields", indices, len(fields))
    elif not dup:
        for problem in name_layout_problems(text_ids):
            f.add(f"{name}: gene files collide: {problem}.")
    return len(fields), layout, facts


# ------------------------------------------------------------------------------------------ obs


def _pattern(schema, k: str, default: str) -> str:
    v = schema.get(k) if isinstance(schema, dict) else None
    return v if isinstance(v, str) else default


def _check_obs(f: _Folder, m: dict, n_cells: int, dims: list[int], comp) -> tuple[str | None, list, dict]:
    """Returns (layout, expanded fields as identity entries, facts)."""
    name = "obs_manifest.json"
    f.keys(m, name, OBS_KEYS)
    facts: dict = {"bits": None, "codes_dtypes": set()}
    if m.get("_format") != "compact_v1":
        f.add(f"{name}: _format must be 'compact_v1'.")
    if m.get("n_points") != n_cells:
        f.add(f"{name} says {m.get('n_points')} cells but dataset_identity.json says {n_cells}.")
    if m.get("latent_key") != "latent_space":
        f.add(f"{name}: latent_key must be 'latent_space'.")
    if m.get("compression") != comp:
        f.add(f"{name}: compression is {m.get('compression')} but the export settings say {comp}.")
    q = m.get("centroid_outlier_quantile")
    if q is not None and not (_num(q) and 0.5 < q < 1):
        f.add(f"{name}: centroid_outlier_quantile must be a number between 0.5 and 1.")
    schemas = m.get("_obsSchemas")
    cont = m.get("_continuousFields")
    cat = m.get("_categoricalFields")
    if not isinstance(schemas, dict) or not isinstance(cont, list) or not isinstance(cat, list):
        f.add(f"{name} needs an _obsSchemas object and _continuousFields / _categoricalFields lists.")
        return None, [], facts
    want_schemas = {k for k, v in (("continuous", cont), ("categorical", cat)) if v}
    if set(schemas) != want_schemas:
        f.add(
            f"{name}: _obsSchemas must have {sorted(want_schemas) or 'no keys'} for these fields, has {sorted(schemas)}."
        )
        return None, [], facts
    bad = [k for k, v in schemas.items() if not isinstance(v, dict)]
    if bad:
        f.add(f"{name}: _obsSchemas.{bad[0]} must be an object, not {_json_type(schemas[bad[0]])}.")
        return None, [], facts
    gz = ".gz" if comp else ""
    layouts = set()
    for s in schemas.values():
        for k, v in s.items():
            if k.endswith("athPattern"):
                layouts.add(_layout_of(str(v)))
    if not schemas:
        return None, [], facts
    if len(layouts) != 1 or None in layouts:
        f.add(f"{name}: path patterns must all use {{key}} (name layout) or all {{index}} (index layout).")
        return None, [], facts
    layout = layouts.pop()
    key = "{key}" if layout == "name" else "{index}"
    bits = None
    if cont:
        s = schemas["continuous"]
        bits = s.get("quantizationBits") if s.get("quantized") else None
    elif cat:
        s = schemas["categorical"]
        bits = {"u8": 8, "u16": 16}.get(s.get("outlierExt")) if s.get("outlierQuantized") else None
    facts["bits"] = bits
    if bits not in (8, 16, None):
        f.add(f"{name}: obs quantization bits must be 8, 16 or absent, got {bits!r}.")
        return None, [], facts
    ext, dtype = PAYLOAD_KINDS[bits]
    if cont:
        want = values_schema("obs", key, bits, comp, with_kind=False)
        if schemas["continuous"] != want:
            f.add(f"{name}: _obsSchemas.continuous must be {json.dumps(want)}.")
    if cat:
        want = {
            "codesPathPattern": f"obs/{key}.codes.{{ext}}{gz}",
            "outlierPathPattern": f"obs/{key}.outliers.{ext}{gz}",
        }
        want |= {"outlierExt": ext, "outlierDtype": dtype, "outlierQuantized": bits is not None}
        if schemas["categorical"] != want:
            f.add(f"{name}: _obsSchemas.categorical must be {json.dumps(want)}.")
    # File names follow the manifest's own patterns; where one is damaged (reported above), the format's,
    # so the files are still checked and not called strays.
    cont_pattern = _pattern(schemas.get("continuous"), "pathPattern", f"obs/{key}.values.{ext}{gz}")
    codes_pattern = _pattern(schemas.get("categorical"), "codesPathPattern", f"obs/{key}.codes.{{ext}}{gz}")
    out_pattern = _pattern(schemas.get("categorical"), "outlierPathPattern", f"obs/{key}.outliers.{ext}{gz}")
    pre = 1 if layout == "index" else 0
    expanded: list = []
    indices: list = []
    keys: list = []
    for pos, entry in enumerate(cont):
        width = pre + 1 + (2 if bits else 0)
        if not isinstance(entry, list) or len(entry) != width or not isinstance(entry[pre], str):
            f.add(f"{name}: _continuousFields[{pos}] must be a list of {width} values.")
            continue
        k = entry[pre]
        keys.append(k)
        indices.append(entry[0] if pre else None)
        expanded.append({"key": k, "kind": "continuous"})
        if bits:
            _check_bounds(f, f"{name} field {k!r}", entry[pre + 1 :], layout)
        stem = str(entry[0]) if pre else safe_name(k)
        rel = cont_pattern.replace(key, stem)
        arr = f.payload(rel, _DTYPES[dtype], n_cells, comp)
        if bits:
            _check_codes(f, rel, arr, bits, f"obs field {k!r}")
    for pos, entry in enumerate(cat):
        width = pre + 5 + (2 if bits else 0)
        if not isinstance(entry, list) or len(entry) != width or not isinstance(entry[pre], str):
            f.add(f"{name}: _categoricalFields[{pos}] must be a list of {width} values.")
            continue
        k, labels, cdtype, marker, cents = entry[pre : pre + 5]
        keys.append(k)
        indices.append(entry[0] if pre else None)
        where = f"{name} field {k!r}"
        if not isinstance(labels, list) or not isinstance(cdtype, str) or cdtype not in MAX_CATEGORIES:
            f.add(f"{where} needs a list of categories and a codes dtype 'uint8' or 'uint16'.")
            continue
        facts["codes_dtypes"].add(cdtype)
        expanded.append({"key": k, "kind": "category", "n_categories": len(labels)})
        if len(labels) > MAX_CATEGORIES[cdtype]:
            f.add(
                f"{where} has {len(labels):,} categories; {cdtype} codes hold at most {MAX_CATEGORIES[cdtype]:,}."
            )
        if not all(isinstance(c, str | bool) or _num(c) for c in labels):
            f.add(f"{where}: every category must be text, a finite number or true/false.")
        elif len({json.dumps(c) for c in labels}) != len(labels):
            f.add(f"{where} lists a category more than once.")
        if marker != MARKER[_BITS[cdtype]]:
            f.add(f"{where}: the missing marker of {cdtype} codes is {MARKER[_BITS[cdtype]]}, not {marker}.")
        if bits:
            _check_bounds(f, f"{where} outliers", entry[pre + 5 :], layout)
        stem = str(entry[0]) if pre else safe_name(k)
        cext = "u8" if cdtype == "uint8" else "u16"
        rel = codes_pattern.replace(key, stem).replace("{ext}", cext)
        codes = f.payload(rel, _DTYPES[cdtype], n_cells, comp)
        if codes is not None and ((codes >= len(labels)) & (codes != marker)).any():
            f.add(f"{rel} holds codes beyond the {len(labels)} categories of {k!r}.")
        rel = out_pattern.replace(key, stem)
        out = f.payload(rel, _DTYPES[dtype], n_cells, comp)
        if bits:
            _check_codes(f, rel, out, bits, f"outliers of {k!r}")
        elif out is not None and ((out < 0) | (out > 1)).any():
            f.add(f"{rel} holds outlier quantiles outside 0..1.")
        if not isinstance(cents, dict) or not set(cents) <= {str(d) for d in dims}:
            f.add(f"{where}: centroidsByDim must map exported dimensions ({dims}) to lists.")
            continue
        for d, lst in cents.items():
            ok = isinstance(lst, list) and all(
                isinstance(c, dict)
                and set(c) == {"category", "position", "n_points"}
                and c["category"] in labels
                and isinstance(c["position"], list)
                and len(c["position"]) == int(d)
                and all(_num(v) for v in c["position"])
                and _is_int(c["n_points"])
                for c in lst
            )
            if not ok:
                f.add(f"{where}: centroids for {d}-D must be {{category, position ({d} numbers), n_points}}.")
    if layout == "index":
        _index_space(f, f"{name} obs fields", indices, len(indices))
    else:
        for problem in name_layout_problems([k for k in keys if isinstance(k, str)], "obs", ".*"):
            f.add(f"{name}: obs files collide: {problem}.")
    if len(set(keys)) != len(keys):
        f.add(f"{name} lists an obs field more than once.")
    return layout, expanded, facts


# ------------------------------------------------------------------------------ connectivity, vectors


def _check_graph(f: _Folder, m: dict, n_cells: int, comp) -> int | None:
    name = "connectivity_manifest.json"
    f.keys(m, name, GRAPH_KEYS)
    n_edges = m.get("n_edges")
    idx = index_dtype(n_cells)
    want = {"format": "edge_pairs", "n_cells": n_cells, "index_bytes": idx.itemsize, "index_dtype": idx.name}
    want |= {"weight_dtype": "float64", "weight_bytes": 8, "compression": comp}
    for k, v in want.items():
        if m.get(k) != v:
            f.add(f"{name}: {k} must be {v!r}, got {m.get(k)!r}.")
    if not _is_int(n_edges) or n_edges < 0:
        f.add(f"{name}: n_edges must be a non-negative integer.")
        return None
    gz = ".gz" if comp else ""
    arrays = {}
    for k, file, dt in (
        ("sourcesPath", "edges.src.bin", idx.str),
        ("destinationsPath", "edges.dst.bin", idx.str),
        ("weightsPath", "edges.weights.f64.bin", "<f8"),
    ):
        rel = f"connectivity/{file}{gz}"
        if m.get(k) != rel:
            f.add(f"{name}: {k} must be {rel!r}.")
        arrays[k] = f.payload(rel, dt, n_edges, comp)
    src, dst, w = arrays["sourcesPath"], arrays["destinationsPath"], arrays["weightsPath"]
    if src is not None and dst is not None and n_edges:
        # uint64 indices above 2**63 would wrap in int64; they are out of range either way.
        s, d = src.astype(np.uint64), dst.astype(np.uint64)
        outside = bool((s >= n_cells).any() or (d >= n_cells).any())
        if outside or not (s < d).all():
            f.add(
                f"{name}: every edge must have source < destination < {n_cells} (each undirected edge once)."
            )
        if outside:
            # Degrees mean nothing for edges that point past the cells (and an index far beyond
            # n_cells would make the degree count as long as that index).
            return n_edges
        # Compared pairwise, not as s * n_cells + d, which overflows for large n_cells.
        if not ((s[1:] > s[:-1]) | ((s[1:] == s[:-1]) & (d[1:] > d[:-1]))).all():
            f.add(f"{name}: edges must be sorted by (source, destination) without repeats.")
        # Counted over the cells the edges touch: n_cells itself may be far larger than the file.
        degree = np.bincount(np.concatenate([s, d]).astype(np.int64))
        if m.get("max_neighbors") != int(degree.max()):
            f.add(
                f"{name}: max_neighbors is {m.get('max_neighbors')} but the edges give {int(degree.max())}."
            )
    if w is not None and not (np.isfinite(w) & (w > 0)).all():
        f.add(f"{name}: edge weights must be finite and above 0.")
    return n_edges


def _check_vectors(f: _Folder, v, dims: list[int], n_cells: int, comp) -> None:
    where = "dataset_identity.json vector_fields"
    if not isinstance(v, dict) or set(v) != {"default_field", "fields"} or not isinstance(v["fields"], dict):
        f.add(f"{where} must be {{default_field, fields}}.")
        return
    if not isinstance(v["default_field"], str) or v["default_field"] not in v["fields"]:
        f.add(f"{where}: default_field {v['default_field']!r} is not one of the fields.")
    for fid, meta in v["fields"].items():
        if not isinstance(meta, dict) or not {
            "label",
            "available_dimensions",
            "default_dimension",
            "files",
        } <= set(meta):
            f.add(f"{where}.{fid} needs label, available_dimensions, default_dimension and files.")
            continue
        f.keys(
            meta, f"{where}.{fid}", ["label", "available_dimensions", "default_dimension", "files"], ["basis"]
        )
        ad = meta["available_dimensions"]
        if (
            not isinstance(ad, list)
            or not all(_is_int(d) for d in ad)
            or not set(ad) <= set(dims)
            or not ad
            or meta["default_dimension"] != max(ad)
        ):
            f.add(
                f"{where}.{fid}: dimensions {ad} must be exported embedding dimensions {dims}, default the highest."
            )
            continue
        files = meta["files"]
        if not isinstance(files, dict) or set(files) != {f"{d}d" for d in ad}:
            f.add(f"{where}.{fid}: files must have one entry per dimension.")
            continue
        for d in ad:
            rel = files[f"{d}d"]
            arr = f.payload(rel, "<f4", n_cells * d, comp) if isinstance(rel, str) else None
            if arr is not None and not np.isfinite(arr).all():
                f.add(f"{rel} holds NaN or Inf vectors.")


# ----------------------------------------------------------------------------------------- entry


def _check_identity(f: _Folder, ident: dict) -> dict:
    name = "dataset_identity.json"
    f.keys(ident, name, IDENTITY_KEYS, IDENTITY_OPTIONAL)
    if ident.get("version") != 2:
        f.add(f"{name}: version must be 2.")
    did = ident.get("id")
    if not isinstance(did, str) or not DATASET_ID.fullmatch(did) or did.endswith("."):
        f.add(f"{name}: id {did!r} must start with a letter or digit, hold only letters, digits, '.', '_', '-', "
              "and not end in '.'.")  # fmt: skip
    if not isinstance(ident.get("name"), str) or not ident.get("name", "").strip():
        f.add(f"{name}: name must be non-empty text.")
    if not isinstance(ident.get("description"), str):
        f.add(f"{name}: description must be text.")
    if not isinstance(ident.get("created_at"), str) or not CREATED_AT.fullmatch(ident.get("created_at", "")):
        f.add(f"{name}: created_at must be a UTC time written YYYY-MM-DDTHH:MM:SSZ.")
    stats = ident.get("stats")
    if not isinstance(stats, dict):
        f.add(f"{name}: stats must be an object.")
        stats = {}
    else:
        f.keys(stats, f"{name} stats", sorted(STATS_KEYS))
    if "export_settings" in ident:
        s = ident["export_settings"]
        if isinstance(s, dict):
            f.keys(s, f"{name} export_settings", sorted(SETTINGS_KEYS))
        else:
            f.add(f"{name}: export_settings must be an object.")
    if "source" in ident and (not isinstance(ident["source"], dict) or "name" not in ident["source"]):
        f.add(f"{name}: source must be an object with a name.")
    return stats


def validate(path: os.PathLike | str, *, genes_only: bool = False, decode_genes: bool = True) -> list[str]:
    """Check an export folder against the Cellucid format.

    Parameters
    ----------
    path
        The export folder (either layout; the layout is read from the manifests).
    genes_only
        Check only ``var/`` and ``var_manifest.json`` (a folder exported without an embedding).
    decode_genes
        Decompress every gene file (in parallel) and check its length and codes. With ``False`` every gene
        file must exist, and 64 of them, spread over the genes, are checked by their gzip header, trailer and
        size: the export's own check uses that for the files it has just written, which would otherwise cost
        a second pass over the whole payload.

    Returns
    -------
    list of str
        The problems found, each a sentence naming the file; an empty list when the viewer will open the
        folder. A damaged folder (files cut short, manifests of the wrong shape) is reported here, never
        raised.

    Notes
    -----
    Checked: exact key sets of every manifest, counts and field lists against the identity, every payload's
    length after decompression, the gzip envelope (one member, nothing after it, reserved flags zero, ISIZE),
    dense indices in the index layout and file-name collisions in the name layout, codes within range,
    finite points within [-1, 1], graph edges (src < dst, sorted, weights > 0), and files no manifest names.

    """
    root = Path(path)
    f = _Folder(root, shallow_genes=not decode_genes)
    if not root.exists():
        return [f"{root} does not exist; check the path."]
    if not root.is_dir():
        return [f"{root} is not a folder."]
    try:
        return _validate(f, genes_only)
    except Exception as e:
        # The checks above are meant to cover every damaged input; should one slip through, the user
        # still gets a list (with what we know so far) rather than a traceback from a checking tool.
        return [
            *f.problems,
            f"{root} could not be checked completely ({type(e).__name__}: {e}); export again.",
        ]


def _validate(f: _Folder, genes_only: bool) -> list[str]:
    root = f.path
    var = f.json("var_manifest.json")
    if genes_only:
        if var is None and "var_manifest.json" not in f.unreadable:
            return [f"{root} has no var_manifest.json."]
        if var is not None:
            _check_var(f, var, None)
        _check_strays(f, within="var/")  # the other files of a full export are not checked, nor strays
        return f.problems
    ident = f.json("dataset_identity.json")
    obs = f.json("obs_manifest.json")
    if ident is None or obs is None:
        pairs = (("dataset_identity.json", ident), ("obs_manifest.json", obs))
        absent = [n for n, o in pairs if o is None and n not in f.unreadable]
        broken = [n for n, o in pairs if o is None and n in f.unreadable]
        if absent:
            # Only an absent identity and obs manifest make a genes-only export; a damaged one does not.
            genes_only_hint = var is not None and not broken
            f.add(
                f"{root} has no {' and '.join(absent)}, so the viewer cannot open it"
                + (" (an export without an embedding holds genes only)." if genes_only_hint else ".")
            )
        if broken:
            f.add(
                f"{root}: the viewer cannot open a folder whose {' and '.join(broken)} cannot be read; "
                "export again."
            )
        return f.problems
    stats = _check_identity(f, ident)
    n_cells = stats.get("n_cells")
    if not _is_int(n_cells) or n_cells < 1:
        f.add("dataset_identity.json: stats.n_cells must be a positive integer.")
        return f.problems
    settings = ident.get("export_settings") if isinstance(ident.get("export_settings"), dict) else {}
    comp = settings.get("compression", obs.get("compression"))

    # Points.
    emb = ident.get("embeddings")
    dims: list[int] = []
    if not isinstance(emb, dict):
        f.add("dataset_identity.json: embeddings must be an object.")
    else:
        f.keys(
            emb, "dataset_identity.json embeddings", ["available_dimensions", "default_dimension", "files"]
        )
        dims = emb.get("available_dimensions") or []
        if (
            not isinstance(dims, list)
            or not dims
            or not all(_is_int(d) for d in dims)
            or dims != sorted(set(dims))
            or not set(dims) <= {1, 2, 3}
        ):
            f.add("dataset_identity.json: available_dimensions must be a sorted, non-empty list of 1, 2, 3.")
            # Go on with the dimensions that make sense, so their points files are still checked.
            dims = sorted(
                {d for d in (dims if isinstance(dims, list) else []) if _is_int(d) and d in (1, 2, 3)}
            )
        if dims and emb.get("default_dimension") != max(dims):
            f.add(f"dataset_identity.json: default_dimension must be {max(dims)}, the highest available.")
        files = emb.get("files") if isinstance(emb.get("files"), dict) else {}
        gz = ".gz" if comp else ""
        if files != {f"{d}d": f"points_{d}d.bin{gz}" for d in dims}:
            f.add(
                f"dataset_identity.json: embeddings.files must be {{{', '.join(f'{d}d: points_{d}d.bin{gz}' for d in dims)}}}."
            )
        for d in dims:
            pts = f.payload(f"points_{d}d.bin{gz}", "<f4", n_cells * d, comp)
            if pts is not None and not np.isfinite(pts).all():
                f.add(f"points_{d}d.bin{gz} holds NaN or Inf coordinates.")
            elif pts is not None and (np.abs(pts) > 1 + 1e-6).any():
                f.add(f"points_{d}d.bin{gz} holds coordinates outside [-1, 1]; points must be normalised.")

    layout, expanded, facts = _check_obs(f, obs, n_cells, dims, comp)
    if ident.get("obs_fields") != expanded:
        f.add(
            "dataset_identity.json: obs_fields must list exactly the obs manifest's fields in the order the viewer "
            f"expands them (continuous first, then categorical): {json.dumps(expanded)[:300]}."
        )
    n_cont = sum(e["kind"] == "continuous" for e in expanded)
    for k, v in (("n_obs_fields", len(expanded)), ("n_continuous_fields", n_cont)):
        if stats.get(k) != v:
            f.add(f"dataset_identity.json: stats.{k} is {stats.get(k)} but the obs manifest has {v}.")
    if stats.get("n_categorical_fields") != len(expanded) - n_cont:
        f.add(f"dataset_identity.json: stats.n_categorical_fields is {stats.get('n_categorical_fields')} but the "
              f"obs manifest has {len(expanded) - n_cont}.")  # fmt: skip

    # Genes.
    n_genes = stats.get("n_genes")
    if var is None:
        # A var_manifest.json that exists but cannot be read is reported (with why) where it is read.
        if n_genes != 0 and "var_manifest.json" not in f.unreadable:
            f.add(f"dataset_identity.json says {n_genes} genes but var_manifest.json is missing.")
    else:
        count, var_layout, vfacts = _check_var(f, var, n_cells)
        if n_genes != count or count == 0:
            f.add(f"dataset_identity.json says {n_genes} genes but var_manifest.json lists {count}"
                  + (" (with no genes there must be no var_manifest.json)." if count == 0 else "."))  # fmt: skip
        if layout and var_layout and layout != var_layout:
            f.add(
                f"var_manifest.json uses the {var_layout} layout but obs_manifest.json the {layout} layout."
            )
        layout = layout or var_layout
        if vfacts["compression"] != comp:
            f.add(
                f"var_manifest.json: compression is {vfacts['compression']} but the export settings say {comp}."
            )
        if "var_quantization" in settings and settings["var_quantization"] != vfacts["quantization"]:
            f.add("dataset_identity.json: export_settings.var_quantization differs from var_manifest.json.")
    if settings:
        if settings.get("obs_continuous_quantization") != facts["bits"] and (expanded or facts["bits"]):
            f.add(
                "dataset_identity.json: export_settings.obs_continuous_quantization differs from obs_manifest.json."
            )
        cd = settings.get("obs_categorical_dtype")
        allowed = ("uint8", "uint16") if layout == "index" else ("auto", "uint8", "uint16")
        if cd not in allowed:
            f.add(
                f"dataset_identity.json: export_settings.obs_categorical_dtype must be one of {allowed}, got {cd!r}."
            )
        elif cd != "auto" and facts["codes_dtypes"] - {cd}:
            f.add(
                f"obs_manifest.json has {sorted(facts['codes_dtypes'])} codes but the export settings say {cd}."
            )

    # Graph.
    graph = f.json("connectivity_manifest.json")
    n_edges = _check_graph(f, graph, n_cells, comp) if graph is not None else None
    if stats.get("has_connectivity") != (graph is not None):
        f.add("dataset_identity.json: stats.has_connectivity does not match connectivity_manifest.json.")
    if stats.get("n_edges") != n_edges:
        f.add(f"dataset_identity.json: stats.n_edges is {stats.get('n_edges')} but the graph has {n_edges}.")
    if "vector_fields" in ident:
        _check_vectors(f, ident["vector_fields"], dims, n_cells, comp)
    _check_strays(f)
    return f.problems


#: Gene files whose gzip envelope the export's own check reads (the others: existence only).
ENVELOPE_SAMPLE = 64


def _check_written_genes(f: _Folder, genes: list[tuple[str, str]], comp, size: int) -> None:
    """The export's check of its own gene files: all present (one directory listing), a sample opened.

    Reading 20,000 headers back costs seconds and only re-checks the writer's own arithmetic, which
    the sample does as well; the user-facing :func:`validate` still decodes every file.
    """
    listed: dict[str, set[str]] = {}
    step = max(1, len(genes) // ENVELOPE_SAMPLE)
    for k, (rel, _) in enumerate(genes):
        f.declared.add(rel)
        folder, _, fname = rel.rpartition("/")
        if folder not in listed:
            d = f.path / folder
            listed[folder] = set(os.listdir(d)) if d.is_dir() else set()
        if not f.suffix(rel, comp):
            continue
        if fname not in listed[folder]:
            f.add(f"{rel} is missing.")
        elif k % step == 0 or k == len(genes) - 1:
            f._envelope(f.path / rel, rel, size)


_MANIFEST_FOLDERS = {"var_manifest.json": "var/", "connectivity_manifest.json": "connectivity/"}


def _check_strays(f: _Folder, within: str = "") -> None:
    """Files no manifest mentions, under ``within``: an orphan payload means the folder mixes two exports."""
    # The files of a manifest that cannot be read are not strays: that manifest is the problem.
    skip = tuple(folder for m, folder in _MANIFEST_FOLDERS.items() if m in f.unreadable)
    stray = []
    for dirpath, dirnames, filenames in os.walk(f.path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, f.path)
        for name in sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            if (
                rel.startswith(within)
                and not name.startswith(".")
                and rel not in f.declared
                and not rel.startswith(skip)
            ):
                stray.append(rel)
    if stray:
        f.add(f"{f.path} holds files no manifest mentions: {_show(stray, 5)}. Remove them or export again.")
