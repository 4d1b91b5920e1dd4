"""Benchmark a fixed git revision of ``src/`` while the working tree keeps changing.

``snapshot("HEAD")`` extracts ``src/`` of that revision with ``git archive`` into
``benchmarks/results/snapshots/<sha>/`` (read-only use; the repository is not touched) and returns
the folder to put first on ``PYTHONPATH``. ``None`` or ``"worktree"`` means the working tree (the
editable install), whatever state it is in.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def resolve_rev(rev: str | None) -> tuple[str | None, str]:
    """(full sha or None for the working tree, a label for reports)."""
    if rev in (None, "", "worktree"):
        sha = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True, text=True
        ).stdout.strip()
        return None, f"working tree at {sha or '?'}" + (" + uncommitted changes in src/" if dirty else "")
    r = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"], capture_output=True, text=True
    )
    if r.returncode != 0:
        raise SystemExit(f"unknown git revision {rev!r}: {r.stderr.strip()}")
    sha = r.stdout.strip()
    return sha, f"git {sha[:7]}"


def snapshot(rev: str | None) -> tuple[Path | None, str]:
    """Extract ``src/`` at ``rev``; returns (folder for PYTHONPATH or None, label)."""
    sha, label = resolve_rev(rev)
    if sha is None:
        return None, label
    dest = HERE / "results" / "snapshots" / sha[:12]
    if not (dest / "src" / "cellucid_export" / "__init__.py").exists():
        tar = subprocess.run(
            ["git", "-C", str(REPO), "archive", sha, "src"], capture_output=True, check=True
        ).stdout
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            t.extractall(dest, filter="data")
    return dest / "src", label
