"""The troubleshooting page quotes messages the code really raises."""

from __future__ import annotations

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
