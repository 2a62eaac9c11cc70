"""One verdict per fact: doctor's "model" and "gpu" rows and serve's preflight say the same.

Both tables take these rows from one function each (turbo/serve_preflight.py). They differ in
weight only where they should: a model that is not there yet is FAIL before a launch and WARN
in doctor (advice on a fresh host). What they say and what to do is one text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serve_fixtures import complete_model
from tests.test_doctor import FakeHost
from turbo import doctor, serve
from turbo.checks import FAIL, PASS, WARN, Check
from turbo.manifest import manifest_path
from turbo.pins import load_pins
from turbo.profiles import Overrides

PINS = load_pins()


def serve_row(name: str, model: Path, host: FakeHost) -> Check:
    prep = serve.prepare("vanilla", PINS, Overrides(model=str(model)),
                         probe=serve.Probe(host=host), environ={})
    return {c.name: c for c in prep.checks}[name]


def doctor_row(name: str, model: Path, host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> Check:
    monkeypatch.setenv("MODEL", str(model))
    return {c.name: c for c in doctor.run_checks(PINS, host)}[name]


def model_dir(case: str, d: Path) -> Path:
    if case == "absent":
        return d
    if case == "empty":
        d.mkdir()
        return d
    complete_model(d)
    if case == "no manifest":
        manifest_path(d).unlink()
    elif case == "incomplete":
        shard = next(d.glob("*.safetensors"))
        shard.write_bytes(shard.read_bytes()[:10])
    elif case == "unusable manifest":
        manifest_path(d).write_text("[]")
    return d


# (serve, doctor)
MODEL_WEIGHTS = {
    "absent": (FAIL, WARN),
    "empty": (FAIL, WARN),
    "no manifest": (FAIL, WARN),
    "incomplete": (FAIL, FAIL),
    "unusable manifest": (FAIL, FAIL),
    "complete": (PASS, PASS),
}


@pytest.mark.parametrize("case", list(MODEL_WEIGHTS))
def test_model_rows_say_the_same(case: str, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    d = model_dir(case, tmp_path / "model")
    served = serve_row("model", d, FakeHost())
    advised = doctor_row("model", d, FakeHost(), monkeypatch)
    assert (served.status, advised.status) == MODEL_WEIGHTS[case]
    assert (served.detail, served.fix) == (advised.detail, advised.fix)
    assert str(d) in served.detail
    if served.status != PASS:
        assert "fetch-model" in served.fix


@pytest.mark.parametrize(("smi", "status"), [
    (None, FAIL),
    ("NVIDIA GB10, 12.1, 580.95.05", PASS),
    ("NVIDIA H100 80GB HBM3, 9.0, 580.65.06", WARN),
])
def test_gpu_rows_are_one_verdict(smi: str | None, status: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = complete_model(tmp_path / "model")
    served = serve_row("gpu", model, FakeHost(smi=smi))
    advised = doctor_row("gpu", model, FakeHost(smi=smi), monkeypatch)
    assert served == advised
    assert served.status == status
