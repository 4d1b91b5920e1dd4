"""The ``cellucid-export`` command: export, estimate and inspect from a shell."""

from __future__ import annotations

import argparse
import ast
import difflib
import inspect
import json
import logging
import re
import sys
import warnings
from pathlib import Path

import numpy as np

from .accessor import CellucidAccessor
from .catalog import write_catalog
from .errors import CellucidExportError, InvalidParameterError
from .export import estimate_h5ad, export_h5ad
from .inputs import _read_index, open_h5ad
from .plan import DEFAULT_MAX_BYTES, DEFAULT_MEMORY_BUDGET, format_bytes, plural
from .reader import read_export
from .validate import validate
from .writer import InterruptedAfterPublish

# Messages are written for Python callers ("pass layer='counts'"); from a shell the same advice names the option.
# The options are those of adata.cellucid.export(), spelt as flags (overwrite and progress are switches).
_OPTIONS = {
    name: "--" + name.replace("_", "-")
    for name, p in inspect.signature(CellucidAccessor.export).parameters.items()
    if p.kind is p.KEYWORD_ONLY and name not in ("overwrite", "progress")
}
_OPTIONS["embeddings"] = "--embedding"
_OPTIONS["default"] = "--default"  # write_catalog's
_PYTHON_VALUE = r"None|True|False|'[^']*'|\[[^\]]*\]|adata\.var\.\w+|[0-9][0-9.]*(?: [KMGT]?B)?"
# A keyword is rewritten only where what follows is a value the command can take, or nothing at all
# ("pass layer=."); Python code after it (genes=sorted(genes)) is left as it is.
_KEYWORD = re.compile(
    rf"(?<![\w.\[])(?P<name>{'|'.join(_OPTIONS)}|overwrite)="
    rf"(?:(?P<value>{_PYTHON_VALUE})(?![\w(\[])|(?=[\s.,;:)]|$))"
)
# Messages that start with an option's name ("compression must be ..."); never a path that starts alike.
_LEADING = re.compile(rf"^({'|'.join(_OPTIONS)})(?= must | cannot be None)")
# An option named in a sentence ("leave the column out of obs_keys"): names with an underscore only, which
# are not words of a sentence nor parts of a path.
_BARE = re.compile(rf"(?<![\w.'\"\[/-])({'|'.join(n for n in _OPTIONS if '_' in n)})(?![\w'\"=(\[/])")
# Advice whose shell form is not a mere change of spelling.
_PHRASES = {
    "leave gene_id_column=None to use var_names": "leave out --gene-id-column to use var_names",
    "a positive integer, -1 or None (all cores)": "a positive integer, or -1 (all cores)",
    "(list(dict.fromkeys(genes)) keeps the first of each, e.g. for markers of several groups)": "in --genes",
    "genes=[]": "--genes none",
}


def _shell_value(value: str) -> str | None:
    """The value as typed in a shell; None when it is Python code, not a value."""
    if value == "None":
        return "none"
    if value.startswith(("'", "[")):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None
        text = ",".join(map(str, parsed)) if isinstance(parsed, list) else str(parsed)
        return repr(text) if " " in text else text  # a value with spaces needs its quotes in a shell
    return value.removeprefix("adata.var.")


def _shell_words(message: str) -> str:
    """Rewrite Python keyword advice in ``message`` as the command's options (``layer=`` -> ``--layer``)."""

    def option(m: re.Match) -> str:
        name, value = m["name"], m["value"]
        if name == "connectivities" and value == "None":
            return "--no-connectivities"
        if name == "overwrite":
            return "--overwrite"
        if name == "embeddings" and value == "False":
            return "--embedding none"
        if not value:
            return _OPTIONS[name]
        shell = _shell_value(value)
        return m[0] if shell is None else f"{_OPTIONS[name]} {shell}"

    for python, shell in _PHRASES.items():
        message = message.replace(python, shell)
    message = _LEADING.sub(lambda m: _OPTIONS[m[1]], _KEYWORD.sub(option, message))
    message = _BARE.sub(lambda m: _OPTIONS[m[1]], message)
    return re.sub(r"\b(be|or) None\b", r"\1 none", message)


def _optional_int(text: str) -> int | None:
    if text.lower() in ("none", "null", "no", "off", "f32", "float32"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or 'none'") from None


def _genes_arg(value: str | None, h5ad: str):
    """--genes takes a boolean var column, comma-separated ids, or @file with one id per line."""
    if value is None:
        return None
    if value.strip().lower() in _NONE:
        return []  # the cell data only
    if value.startswith("@"):
        if not Path(value[1:]).is_file():
            raise InvalidParameterError(
                f"--genes {value}: there is no file {value[1:]!r} (a list of genes, one per line). Check its path."
            )
        lines = Path(value[1:]).read_text().splitlines()
        return _some_genes([g.strip() for g in lines if g.strip() and not g.startswith("#")], value)
    with open_h5ad(h5ad) as f:  # a missing or cut-short file gets its own message
        columns = list(f["var"].attrs.get("column-order", [])) if "var" in f else []
        if value in columns:
            return value
        genes = [g.strip() for g in value.split(",") if g.strip()]
        close = difflib.get_close_matches(value, columns, n=1, cutoff=0.8) if len(genes) == 1 else []
        if close and value not in _read_index(f["var"]):
            # One word that is not a gene but looks like a column: a typo of the column, most likely.
            raise InvalidParameterError(
                f"--genes {value}: there is no var column and no gene of that name; did you mean the column "
                f"{close[0]!r}? (var columns: {', '.join(columns)})"
            )
    return _some_genes(genes, value)


def _some_genes(genes: list[str], value: str) -> list[str]:
    """An empty list exports no gene, which the command line asks for by name (--genes none), never by accident."""
    if not genes:
        raise InvalidParameterError(
            f"--genes {value} lists no gene. Name genes, or pass --genes none to export the cell data only."
        )
    return genes


_NONE = ("none", "no", "off", "false")


def _list_arg(value: str | None, none):
    """A comma-separated list (spaces around items dropped); 'none' gives ``none``; absent gives None (default)."""
    if value is None:
        return None
    if value.strip().lower() in _NONE:
        return none
    return [v.strip() for v in value.split(",") if v.strip()]


def _embeddings_arg(values: list[str] | None):
    """--embedding, repeatable (or comma-separated); 'none' exports genes only."""
    if values is None:
        return None
    if len(values) == 1 and values[0].strip().lower() in _NONE:
        return False
    if any(v.strip().lower() in _NONE for v in values):
        raise InvalidParameterError(
            "--embedding none exports genes only, so it cannot be combined with other --embedding options."
        )
    return [k for v in values for k in _list_arg(v, [])]


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("h5ad", help="the .h5ad file (read lazily; only the chosen matrix is streamed)")
    p.add_argument("--layer", help="'X', 'raw' or a layer name (default: chosen automatically, and reported)")
    p.add_argument(
        "--genes",
        help="a boolean var column (e.g. highly_variable), comma-separated gene ids, @file with one id per line, "
        "or 'none' for the cell data only (default: all genes)",
    )
    p.add_argument("--gene-id-column", help="var column holding the gene names to show (default: var_names)")
    p.add_argument(
        "--var-quantization",
        type=_optional_int,
        default=8,
        metavar="{8,16,none}",
        help="8 (default), 16, or none for float32",
    )
    p.add_argument(
        "--compression",
        type=_optional_int,
        default=6,
        metavar="{1..9,none}",
        help="gzip level 1-9 (default 6) or none",
    )
    p.add_argument(
        "--layout",
        choices=["name", "index"],
        default="name",
        help="'name': var/<gene>.values.u8.gz (default); 'index': var/<i>.values.u8.gz (current viewers)",
    )
    p.add_argument(
        "--max-bytes",
        default=str(DEFAULT_MAX_BYTES),
        help=f"refuse exports above this size before compression (default {format_bytes(DEFAULT_MAX_BYTES)}; "
        "'none' turns the check off)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellucid-export",
        description="Export an .h5ad file to the Cellucid web viewer, check exports, and list them for hosting.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="write an export folder")
    _add_selection(p)
    p.add_argument("out_dir", help="the export folder to create")
    p.add_argument(
        "--memory-budget",
        default=str(DEFAULT_MEMORY_BUDGET),
        help="working memory for gene blocks, e.g. 512MiB (default) or 2GB",
    )
    p.add_argument("--n-jobs", type=int, default=None, help="compression threads (default: all cores)")
    p.add_argument("--dataset-name", help="name shown in the viewer (default: the folder name)")
    p.add_argument(
        "--dataset-id",
        help="id in URLs and datasets.json (default: the folder name, or derived from --dataset-name when given)",
    )
    p.add_argument("--description", help="free text shown with the dataset")
    p.add_argument(
        "--embedding",
        action="append",
        help="obsm key to draw, e.g. X_umap (repeatable; default: every 1-3 column X_* embedding); 'none' "
        "exports genes only",
    )
    p.add_argument(
        "--obs-keys",
        help="comma-separated obs columns, or 'none' (default: every column the viewer can show)",
    )
    p.add_argument("--latent-key", default="X_pca", help="obsm space for outlier quantiles (default X_pca)")
    p.add_argument(
        "--connectivities",
        default="connectivities",
        help="obsp graph drawn as edges, or 'none' (default: 'connectivities', when the file has it)",
    )
    p.add_argument("--no-connectivities", action="store_true", help="do not export a graph")
    p.add_argument(
        "--obs-continuous-quantization",
        type=_optional_int,
        default=None,
        metavar="{8,16,none}",
        help="bits for continuous obs values (default none: float32)",
    )
    p.add_argument(
        "--obs-categorical-dtype",
        choices=["auto", "uint8", "uint16"],
        default="auto",
        help="codes of categorical obs columns (default auto: uint8 up to 254 categories, else uint16)",
    )
    p.add_argument(
        "--vector-fields",
        help="comma-separated obsm vectors drawn over an embedding, e.g. velocity_umap, or 'none' "
        "(default: entries aligned with an exported embedding)",
    )
    p.add_argument(
        "--centroid-outlier-quantile",
        type=float,
        default=0.95,
        help="category labels ignore cells beyond this distance quantile (default 0.95)",
    )
    p.add_argument(
        "--centroid-min-points",
        type=int,
        default=10,
        help="categories with fewer cells get no label and no outlier quantiles (default 10)",
    )
    p.add_argument("--source", help="name of the data source, recorded in dataset_identity.json")
    p.add_argument(
        "--created-at",
        help="creation time recorded in dataset_identity.json, 'YYYY-MM-DDTHH:MM:SSZ' (default: now); a fixed "
        "value makes repeated exports byte-identical",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace out_dir if it holds a previous export (or nothing)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    p = sub.add_parser(
        "estimate",
        help="print the size of an export without writing anything (exit status 1 if above --max-bytes)",
    )
    _add_selection(p)

    p = sub.add_parser("demo", help="export scanpy's bundled pbmc68k_reduced (needs scanpy) and inspect it")
    p.add_argument("out_dir", nargs="?", default="exports/pbmc68k_reduced")
    p.add_argument(
        "--overwrite", action="store_true", help="replace out_dir if it holds a previous export (or nothing)"
    )

    p = sub.add_parser(
        "validate", help="check an export folder against the format (exit status 1 on problems)"
    )
    p.add_argument("export_dir")
    p.add_argument(
        "--genes-only",
        action="store_true",
        help="check only the gene files and var_manifest.json (an export made without an embedding)",
    )

    p = sub.add_parser("catalog", help="write datasets.json for a folder of dataset folders")
    p.add_argument("root")
    p.add_argument("--default", help="id of the dataset opened first (default: the first)")

    p = sub.add_parser("inspect", help="summarise an export folder, or one gene of it")
    p.add_argument("export_dir")
    p.add_argument("--gene", action="append", help="print the decoded values of this gene (repeatable)")
    return parser


def _selection_kwargs(args) -> dict:
    return {
        "layer": args.layer,
        "genes": _genes_arg(args.genes, args.h5ad),
        "gene_id_column": args.gene_id_column,
        "var_quantization": args.var_quantization,
        "compression": args.compression,
        "layout": args.layout,
        "max_bytes": None if args.max_bytes.lower() == "none" else args.max_bytes,
    }


def _for_which_viewers(folder: str) -> str:
    """Which viewers open a valid folder: the two layouts are read by different viewer generations."""
    try:
        layout = read_export(folder).layout
    except CellucidExportError:
        return ""
    if layout == "index":
        return ", the index layout: current viewer releases open it"
    return (
        ", the name layout: viewers of the name era open it; current viewer releases need an export "
        "with --layout index"
    )


def _inspect(args) -> None:
    folder = Path(args.export_dir)
    if (
        (folder / "dataset_identity.json").is_file()
        and not (folder / "var_manifest.json").exists()
        and not args.gene
    ):
        stats = json.loads((folder / "dataset_identity.json").read_text()).get("stats", {})
        print(
            f"{folder}: a dataset without genes (exported with --genes none), {stats.get('n_cells', '?'):,} cells."
        )
        return
    ex = read_export(args.export_dir)
    print(ex)
    if not args.gene:
        shown = ", ".join(ex.gene_ids[:10]) + (" ..." if len(ex.gene_ids) > 10 else "")
        print(f"genes: {shown}")
        return
    for g in args.gene:
        v = ex.gene(g)
        finite = v[np.isfinite(v)]
        stats = (
            f"min {finite.min():.4g}, max {finite.max():.4g}, mean {finite.mean():.4g}"
            if finite.size
            else "no values"
        )
        print(
            f"{g}: {ex.file(g).relative_to(ex.path)}; {stats}; {int(np.isnan(v).sum())} missing; "
            f"{int((finite != 0).sum())} non-zero cells"
        )
        with np.printoptions(precision=4, threshold=20, edgeitems=5):
            print(f"  {v}")


def _demo(args) -> None:
    try:
        import scanpy as sc
    except ImportError:
        raise CellucidExportError(
            "The demo uses scanpy's bundled pbmc68k_reduced dataset: pip install scanpy (or cellucid-export[scanpy])."
        ) from None
    import cellucid_export  # noqa: F401  (registers adata.cellucid)

    adata = sc.datasets.pbmc68k_reduced()
    print(_shell_words(repr(adata.cellucid.estimate(genes=adata.var.highly_variable))))
    res = adata.cellucid.export(args.out_dir, genes=adata.var.highly_variable, overwrite=args.overwrite)
    print(_shell_words(repr(res)))
    ex = read_export(res.path)
    gene = "CD79A" if "CD79A" in ex else ex.gene_ids[0]
    values = ex.gene(gene)
    source = adata.raw[:, gene].X.toarray().ravel()
    print(
        f"{gene}: largest difference from raw.X after 8-bit quantization {np.abs(values - source).max():.4f} "
        f"(half a step: {ex.step(gene) / 2:.4f})"
    )


class _ShellWordsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _shell_words(record.getMessage()), ()
        return True


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {_shell_words(str(message))}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    logger = logging.getLogger("cellucid_export")
    words = _ShellWordsFilter()
    logger.addFilter(words)
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return _run(args)
    finally:
        logger.removeFilter(words)
        warnings.showwarning = shown


def _run(args) -> int:
    try:
        if args.command == "export":
            res = export_h5ad(
                args.h5ad,
                args.out_dir,
                **_selection_kwargs(args),
                memory_budget=args.memory_budget,
                n_jobs=args.n_jobs,
                overwrite=args.overwrite,
                progress=not args.no_progress,
                dataset_name=args.dataset_name,
                dataset_id=args.dataset_id,
                description=args.description,
                embeddings=_embeddings_arg(args.embedding),
                obs_keys=_list_arg(args.obs_keys, []),
                latent_key=args.latent_key,
                connectivities=None
                if args.no_connectivities or args.connectivities.lower() in _NONE
                else args.connectivities,
                obs_continuous_quantization=args.obs_continuous_quantization,
                obs_categorical_dtype=args.obs_categorical_dtype,
                vector_fields=_list_arg(args.vector_fields, False),
                centroid_outlier_quantile=args.centroid_outlier_quantile,
                centroid_min_points=args.centroid_min_points,
                source=args.source,
                created_at=args.created_at,
            )
            print(_shell_words(repr(res)))
        elif args.command == "validate":
            problems = validate(args.export_dir, genes_only=args.genes_only)
            for problem in problems:
                print(f"problem: {problem}")
            if problems:
                print(
                    f"{args.export_dir}: {plural(len(problems), 'problem')}; the viewer may not open it.",
                    file=sys.stderr,
                )
                return 1
            if args.genes_only:
                print(f"{args.export_dir}: OK, the gene files and var_manifest.json are valid.")
            else:
                print(f"{args.export_dir}: OK{_for_which_viewers(args.export_dir)}.")
        elif args.command == "catalog":
            print(f"wrote {write_catalog(args.root, default=args.default)}")
        elif args.command == "demo":
            _demo(args)
        elif args.command == "estimate":
            plan = estimate_h5ad(args.h5ad, **_selection_kwargs(args))
            print(_shell_words(repr(plan)))
            if not plan.within_max_bytes:
                return 1
        else:
            _inspect(args)
    except (CellucidExportError, FileNotFoundError) as e:  # other errors are bugs: their traceback helps
        print(f"error: {_shell_words(str(e))}", file=sys.stderr)
        return 2
    except InterruptedAfterPublish as e:
        print(f"interrupted, {e}.", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted: nothing was written to the target folder.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
