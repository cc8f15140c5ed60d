"""Users' mounting code type-checks under ``mypy --strict`` (as msgspec's ``tests/typing``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

HERE = Path(__file__).parent
PROJECT = HERE.parent.parent


@pytest.mark.slow
@pytest.mark.parametrize(
    "snippet",
    [
        pytest.param("mount_snippet.py", id="starlette-fastapi-middleware-server-api"),
        pytest.param("quart_snippet.py", id="quart-middleware"),
    ],
)
def test_snippet_passes_mypy_strict(snippet: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mounting, wrapping and the server-side API need no cast or ignore under ``--strict``."""
    monkeypatch.chdir(PROJECT)
    stdout, stderr, status = api.run(
        [
            "--strict",
            "--config-file",
            str(PROJECT / "pyproject.toml"),
            "--no-error-summary",
            "--show-error-codes",
            str(HERE / snippet),
        ]
    )
    errors = [line for line in stdout.splitlines() if "error:" in line]
    assert errors == [], stdout
    assert status == 0, stdout + stderr
