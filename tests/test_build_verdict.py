"""One verdict per fact: doctor's "vllm build" row and serve's preflight read a stamp alike.

They may differ in weight only (serve gates a launch: FAIL; doctor advises: WARN), never in what
they say: before the two shared a function, doctor passed a local CPU build that serve refused,
and their details and fixes were worded apart.
"""

from __future__ import annotations

from typing import Any

import pytest

from turbo import doctor, serve
from turbo.checks import FAIL, PASS, WARN

ADOPTED = {"kind": "adopted", "path": "/x/vllm", "dist": "vllm"}
STAMPS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "failed": {"result": "failed"},
    "built here for GB10": {"result": "ok", "commit": "c" * 40, "arch_list": "12.1a"},
    "built here for cpu": {"result": "ok", "commit": "c" * 40, "target": "cpu"},
    "built here, cubins not GB10": {
        "result": "ok", "commit": "c" * 40, "arch_list": "9.0",
        "cubins": {"targets": {"a.so": ["sm_90"]}, "gb10": False},
    },
    "adopted cpu": {"result": "ok", "target": "cpu", "vllm_version": "0.16.0", "source": ADOPTED},
    "adopted GB10": {
        "result": "ok", "target": "cuda", "vllm_version": "0.16.0", "source": ADOPTED,
        "cubins": {"targets": {"a.so": ["sm_121a"]}, "gb10": True},
    },
}
# What serve's gate says for a GPU profile; doctor says the same, WARN where serve says FAIL.
SERVE_SAYS = {
    "none": FAIL, "failed": FAIL, "built here for GB10": PASS, "built here for cpu": FAIL,
    "built here, cubins not GB10": FAIL, "adopted cpu": FAIL, "adopted GB10": PASS,
}


@pytest.mark.parametrize("case", sorted(STAMPS))
def test_doctor_and_serve_give_one_verdict(case: str) -> None:
    built = STAMPS[case]
    gate = serve.build_check(built, "cuda")
    advice = doctor.check_vllm_built(built)
    assert gate.status == SERVE_SAYS[case]
    assert advice.status == (WARN if gate.status == FAIL else gate.status)
    assert (advice.name, advice.detail, advice.fix) == (gate.name, gate.detail, gate.fix)
    if gate.status == FAIL:
        assert gate.fix, "a refusal says what to do"


def test_the_verdict_reads_the_stamps_own_result_word() -> None:
    """build_verdict spells the stamp's "usable" result itself (it stands below the stamp);
    the two spellings are one word, or every finished build would read as unfinished."""
    from turbo import build_verdict, stamp

    assert build_verdict.USABLE == stamp.OK
    usable = {"result": stamp.OK, "commit": "c" * 40, "arch_list": "12.1a"}
    assert build_verdict.vllm_build_check(usable).status == PASS
