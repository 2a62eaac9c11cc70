"""The command result convention: --json prints the data, otherwise the text; codes carry."""

from __future__ import annotations

import json

from turbo.outcome import Outcome, checked, done


def test_json_prints_data_text_otherwise() -> None:
    out = done("2 rows", {"rows": 2})
    assert out.render(as_json=False) == "2 rows"
    assert json.loads(out.render(as_json=True)) == {"rows": 2}
    assert out.code == 0


def test_json_without_data_falls_back_to_text() -> None:
    assert Outcome(text="nothing to report").render(as_json=True) == "nothing to report"


def test_checked_fails_with_exit_1() -> None:
    assert checked("t", [], failed=True).code == 1
    assert checked("t", [], failed=False).code == 0
