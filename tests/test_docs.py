"""The troubleshooting page quotes messages the code really raises."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_troubleshooting_messages_exist_in_code():
    doc = (ROOT / "docs" / "troubleshooting.md").read_text()
    quoted = re.findall(r"\*\*`([^`]+)`\*\*", doc)
    assert len(quoted) >= 30
    code = " ".join(p.read_text() for p in (ROOT / "src" / "cellucid_export").glob("*.py"))
    code = re.sub(r'"\s*\n\s*f?"', "", code)  # join implicitly concatenated string literals
    for message in quoted:
        # Placeholders in the docs (X, Y, N, M, ...) stand for values formatted into the message.
        parts = [p for p in re.split(r"\b(?:X|Y|N|M)\b|\.\.\.|'lognorm'", message) if p.strip()]
        for part in parts:
            assert part.strip() in code, (
                f"troubleshooting quotes {message!r}, but {part.strip()!r} is not in the code"
            )


# ------------------------------------------------------------------------------------------------
# Every message the package can raise is documented, and every error class.

# Messages a user cannot meet: raised and caught inside the package.
INTERNAL_MESSAGES = (
    "non-standard JSON value",
    "SparseGenes can only be sliced",
    # Invariants of the run encoder (_deflate): a bug if ever raised, not something a user can fix.
    "more symbols than codes",
    "another size than it priced",
    # codec.gzip_decompress: a helper for tests and scripts; the package reads through gunzip_strict.
    "The data \0.",
)


def _literal_text(node: ast.AST) -> str:
    """The constant text of a message expression; formatted values become a NUL placeholder."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "\0" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _literal_text(node.left) + _literal_text(node.right)
    return "\0"


def _raised_messages() -> list[tuple[str, str]]:
    """(where, message text) of every ``raise X("...")`` and ``warnings.warn("...")`` in the package."""
    out = []
    for path in sorted((ROOT / "src" / "cellucid_export").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                call = node.exc
            elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("warnings.warn", "warn"):
                call = node
                if path.name == "_logging.py":
                    continue  # the helper that warns; its callers' messages are checked
            else:
                continue
            if call.args:
                out.append((f"{path.name}:{node.lineno}", _literal_text(call.args[0])))
    return out


def _documented_fragments() -> list[str]:
    doc = (ROOT / "docs" / "troubleshooting.md").read_text()
    fragments = []
    for message in re.findall(r"\*\*`([^`]+)`\*\*", doc):
        parts = re.split(r"\b(?:X|Y|N|M)\b|\.\.\.|'lognorm'", message)
        # Short pieces ("genes") would match any message; only distinctive ones count.
        fragments += [p.strip() for p in parts if len(p.strip()) >= 10]
    return fragments


def test_every_raised_message_is_in_troubleshooting():
    fragments = _documented_fragments()
    messages = _raised_messages()
    assert len(messages) > 80
    undocumented = [
        f"{where}: {text.replace(chr(0), '...')[:100]}"
        for where, text in messages
        if not any(f in text for f in fragments) and not any(m in text for m in INTERNAL_MESSAGES)
    ]
    assert not undocumented, (
        "These messages are not in docs/troubleshooting.md; add a **`quoted part`** of each, its cause and "
        "the fix:\n" + "\n".join(undocumented)
    )


def _error_classes() -> set[type]:
    import cellucid_export

    for mod in sorted((ROOT / "src" / "cellucid_export").glob("*.py")):
        if not mod.stem.startswith("_"):
            importlib.import_module(f"cellucid_export.{mod.stem}")
    found, todo = set(), [cellucid_export.CellucidExportError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    return {c for c in found if c.__module__.startswith("cellucid_export")} | {
        cellucid_export.CellucidExportWarning
    }


def test_every_error_class_is_in_troubleshooting_and_the_api_reference():
    trouble = (ROOT / "docs" / "troubleshooting.md").read_text()
    api = (ROOT / "docs" / "api.md").read_text()
    classes = _error_classes()
    assert len(classes) >= 14
    for cls in classes:
        assert f"| `{cls.__name__}` |" in trouble, (
            f"{cls.__name__} is missing from the table in troubleshooting.md"
        )
        assert re.search(rf"autoexception:: cellucid_export\.[\w.]*\b{cls.__name__}\n", api), (
            f"{cls.__name__} is missing from docs/api.md"
        )


# ------------------------------------------------------------------------------------------------
# Numbers on the pages come from the code.


def _generated():
    spec = importlib.util.spec_from_file_location("generated", ROOT / "docs" / "_ext" / "generated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_size_table_is_the_seed_table_computed_by_exportplan():
    text = _generated().size_tables()
    # The user documentation: ~0.10 / 0.20 / 0.40 MB per gene at 100k cells; 20k genes: 2 GB (8-bit), 8 GB (float32).
    for row in ("| 1 | 100.00 KB |", "| 2 | 200.00 KB |", "| 4 | 400.00 KB |"):
        assert row in text
    assert "| 100,000 | 20,000 | 2.00 GB | 4.00 GB | 8.00 GB |" in text
    assert (
        "| 1,000,000 | 20,000 | **20.00 GB** | **40.00 GB** | **80.00 GB** |" in text
    )  # 10x, above the guard
    size_page = (ROOT / "docs" / "size.md").read_text()
    for snippet in ("size-tables.md", "plan-repr.md", "tradeoffs.md"):
        assert f"```{{include}} _generated/{snippet}" in size_page


def test_measured_tradeoffs_regenerate_and_respect_the_bounds():
    gen = _generated()
    m = gen.measure_tradeoffs()
    n = m["n_cells"] * m["n_genes"]
    assert (m["n_cells"], m["n_genes"]) == (700, 765)
    assert (
        m["sizes"][(8, None)] == n and m["sizes"][(16, None)] == 2 * n and m["sizes"][(None, None)] == 4 * n
    )
    for bits in (8, 16):
        # Half a step of the gene's range, plus float32 rounding of the decoded value.
        assert m["errors"][bits]["max_rel"] <= 1 / (2 * (2**bits - 2)) + 1e-6
    assert m["errors"][None]["max"] == 0
    for bits in (8, 16, None):
        for level in (1, 6, 9):
            assert m["sizes"][(bits, level)] < m["sizes"][(bits, None)]
    table = gen.tradeoff_tables(m)
    assert "| uint8 (`var_quantization=8`) | none | 700 B | 1.00 | 1.0x |" in table


def test_performance_page_has_the_placeholder_and_how_to_reproduce():
    page = (ROOT / "docs" / "performance.md").read_text()
    assert "## Latest numbers" in page
    assert "python benchmarks/make_data.py" in page and "python benchmarks/run.py" in page


def test_readme_links_point_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links
    for link in links:
        assert (ROOT / link).is_file(), link
