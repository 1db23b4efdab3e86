"""The CLI's tables (cli/common.py print_table) without a platform: a missing value shows as
"-", and an 80-column table keeps its essential columns whole."""

from __future__ import annotations

import pytest

from training_platform.cli import common
from training_platform.cli.jobs import JOB_COLUMNS


def test_a_job_without_a_dataset_lists_with_a_dash(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: a serve or merge job (dataset null) made `tp jobs list` exit 1 with a TypeError
    once the table had to fit 80 columns."""
    serve = {
        "id": 7,
        "name": "serve tiny",
        "backend": "builtin",
        "algorithm": "serve",
        "model": "tiny-qwen2",
        "dataset": None,
        "priority": 5,
        "status": "running",
        "progress": {"step": None, "total": None},
        "created_at": "2026-12-06T07:00:00Z",
    }
    monkeypatch.setattr(common.console, "_width", 80)
    common.print_table(JOB_COLUMNS, [serve])
    common.print_table(JOB_COLUMNS, [serve], wide=True)
    out = capsys.readouterr().out
    assert "serve tiny" in out and "running" in out and "builtin/serve" in out
    wide_row = next(line for line in out.splitlines()[::-1] if "serve tiny" in line)
    assert [cell.strip() for cell in wide_row.split("│")][5] == "-"  # the dataset
