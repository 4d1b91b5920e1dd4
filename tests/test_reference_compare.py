"""Opt-in: run the reference writers (cellucid 0.0.9 and 0.9.1) and compare with our exports.

Deselected by default. Run with::

    CELLUCID_REF_V009=/path/to/v009/bin/python CELLUCID_REF_V091=/path/to/v091/bin/python \\
        python -m pytest -m reference
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


@pytest.mark.reference
def test_matches_reference_writers(tmp_path, capsys):
    pythons = [os.environ.get("CELLUCID_REF_V009"), os.environ.get("CELLUCID_REF_V091")]
    if not all(pythons):
        pytest.fail(
            "The reference comparison needs the interpreters of two throwaway virtualenvs: set "
            "CELLUCID_REF_V009 to the python of one with `pip install cellucid==0.0.9` and CELLUCID_REF_V091 "
            "to the python of one with `pip install cellucid==0.9.1` (e.g. /work/refenv/v009/bin/python)."
        )
    path = Path(__file__).parent / "reference" / "compare_reference.py"
    spec = importlib.util.spec_from_file_location("compare_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    status = module.main(["compare_reference.py", *pythons, str(tmp_path)])
    assert status == 0, capsys.readouterr().out
