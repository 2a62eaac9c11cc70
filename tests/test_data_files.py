"""Data files are checked, not trusted: profiles.toml, pins.toml and a model's config.json.

Each broken file below is the shipped one with one edit; each must be refused in one line that
names the file, the key and (where there is one) the nearest valid key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_profiles import plan_of, spark_probe
from turbo import memfit, schema, serve
from turbo.errors import TurboError
from turbo.pins import SCHEMA as PINS_SCHEMA
from turbo.pins import load_pins, pins_path
from turbo.profiles import SCHEMA as PROFILES_SCHEMA
from turbo.profiles import load_book, profiles_path

SHIPPED_PROFILES = profiles_path().read_text()
SHIPPED_PINS = pins_path().read_text()


def test_shipped_files_match_their_schemas() -> None:
    import tomllib

    schema.validate(tomllib.loads(SHIPPED_PROFILES), PROFILES_SCHEMA, "profiles.toml", "")
    schema.validate(tomllib.loads(SHIPPED_PINS), PINS_SCHEMA, "pins.toml", "")
    assert load_book().names() and load_pins().serve.port


def _edited(tmp_path: Path, text: str, old: str, new: str, name: str) -> Path:
    assert old in text, f"the shipped file no longer holds {old!r}: update this test"
    out = tmp_path / name
    out.write_text(text.replace(old, new, 1))
    return out


# (what the edit replaces, with what, words the one line must hold)
PROFILE_EDITS = [
    pytest.param("[profiles.mtp.args]", "[profiles.mtp.argz]",
                 ["profiles.mtp.argz", "is not a known key", "Did you mean profiles.mtp.args"],
                 id="argz-drops-mtp"),
    pytest.param("[defaults]\n", 'colour = "blue"\n[defaults]\n',
                 ["colour", "is not a known key", "Valid here: defaults, profiles"],
                 id="unknown-top-level"),
    pytest.param('kind = "serve"\ndescription = "one Spark, NVFP4 with',
                 'kind = "serve"\ncolour = "blue"\ndescription = "one Spark, NVFP4 with',
                 ["profiles.vanilla.colour", "Valid here: kind, description, cluster"],
                 id="unknown-profile-key"),
    pytest.param('MODEL = "model"', 'MODEL = "modle"',
                 ["env_names.MODEL", "--modle", "Did you mean 'model'"], id="env-name-typo"),
    pytest.param("gpu-memory-utilization = 0.80", 'gpu-memory-utilization = "lots"',
                 ["defaults.args.gpu-memory-utilization", "'lots'"], id="wrong-type-arg"),
    pytest.param("gpu-memory-utilization = 0.80", "gpu-memory-utilization = 5",
                 ["defaults.args.gpu-memory-utilization", "up to 1"], id="out-of-range-arg"),
    pytest.param('kind = "ray-head"', 'kind = "ray-heap"',
                 ["profiles.tp2-head.kind", "one of serve, ray-head, ray-worker"], id="bad-kind"),
    pytest.param("cluster = true", 'cluster = "yes"',
                 ["profiles.tp2-head.cluster", "must be true or false"], id="bool-as-text"),
    pytest.param("full_attention_interval = 4", "full_attention_interval = 0",
                 ["model_shape.full_attention_interval", "at least 1"], id="zero-interval"),
    pytest.param("ray_port = 6379", 'ray_port = "6379"',
                 ["cluster.ray_port", "whole number"], id="port-as-text"),
    pytest.param("health_timeout_s = 1800", "health_timeout_s = -5",
                 ["serve.health_timeout_s", "above 0"], id="negative-timeout"),
    pytest.param("[memory]", "[memroy]", ["memroy", "Did you mean memory"], id="section-typo"),
    pytest.param('VLLM_NVFP4_GEMM_BACKEND = "marlin"', "VLLM_NVFP4_GEMM_BACKEND = 1",
                 ["defaults.env.VLLM_NVFP4_GEMM_BACKEND", "must be text"], id="env-not-text"),
]


@pytest.mark.parametrize(("old", "new", "words"), PROFILE_EDITS)
def test_broken_profiles_file_is_one_line(tmp_path: Path, old: str, new: str,
                                          words: list[str]) -> None:
    bad = _edited(tmp_path, SHIPPED_PROFILES, old, new, "profiles.toml")
    with pytest.raises(schema.DataFileError) as exc:
        load_book(bad)
    line = exc.value.line()
    assert "\n" not in line and str(bad) in line and exc.value.exit_code == 2
    for w in words:
        assert w in line, f"{w!r} not in: {line}"


PIN_EDITS = [
    pytest.param("[serve]\n", "[srv]\n", ["srv", "Did you mean serve"], id="section-typo"),
    pytest.param("[build]\n", "[build]\nbogus = 1\n", ["build.bogus", "is not a known key"],
                 id="unknown-key"),
    pytest.param("nvcc_threads = 2", "nvcc_thread = 2",
                 ["build.nvcc_thread", "Did you mean build.nvcc_threads"], id="key-typo"),
    pytest.param("port = 8011", 'port = "8011"', ["serve.port", "whole number"],
                 id="port-as-text"),
    pytest.param("port = 8011", "port = 0", ["serve.port", "from 1 to 65535"], id="port-zero"),
    pytest.param('commit = "3b30e6150777de549b11f67dde3ecc0d3b1f3f50"', 'commit = "main"',
                 ["vllm.commit", "40-hex"], id="commit-not-hash"),
    pytest.param("size_gb = 45", 'size_gb = "45GB"', ["model.size_gb", "number"],
                 id="size-as-text"),
    pytest.param('"*.safetensors",', "7,", ["model.include.0", "must be text"],
                 id="list-item-type"),
    pytest.param('served_name = "qwen3-next"\n', "", ["serve.served_name", "is missing"],
                 id="missing-key"),
    pytest.param("mem_fraction = 0.75", "mem_fraction = 1.5", ["build.mem_fraction"],
                 id="fraction-above-one"),
]


@pytest.mark.parametrize(("old", "new", "words"), PIN_EDITS)
def test_broken_pins_file_is_one_line(tmp_path: Path, old: str, new: str,
                                      words: list[str]) -> None:
    bad = _edited(tmp_path, SHIPPED_PINS, old, new, "pins.toml")
    with pytest.raises(TurboError) as exc:
        load_pins(bad)
    line = exc.value.line()
    assert "\n" not in line and str(bad) in line
    for w in words:
        assert w in line, f"{w!r} not in: {line}"


def test_cli_says_which_file_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Through the real task: `serve --dry-run` with the argz typo is one line, exit 2."""
    from tests.test_bad_input import run_inprocess
    from turbo import profiles

    bad = _edited(tmp_path, SHIPPED_PROFILES, "[profiles.mtp.args]", "[profiles.mtp.argz]",
                  "profiles.toml")
    monkeypatch.setattr(profiles, "profiles_path", lambda: bad)
    code, _, err = run_inprocess(["serve", "--profile", "mtp", "--dry-run"], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().count("\n") == 0 and "profiles.mtp.argz" in err


# --------------------------------------------------------------------------- config.json
@pytest.mark.parametrize(("content", "words"), [
    ('{"num_hidden_layers": 48, "full_attention_interval": 0, "num_key_value_heads": 2, '
     '"head_dim": 256, "linear_num_key_heads": 16, "linear_num_value_heads": 32, '
     '"linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4}',
     "full_attention_interval = 0"),
    ("[1, 2, 3]", "not an object"),
    ('"just text"', "not an object"),
    ("{not json", "is not JSON"),
])
def test_bad_model_config_is_one_line(tmp_path: Path, content: str, words: str) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(TurboError) as exc:
        memfit.load_shape(tmp_path, load_book().section("model_shape"))
    assert words in exc.value.line() and "config.json" in exc.value.line()


def test_bad_model_config_fails_the_memory_fit_row(tmp_path: Path) -> None:
    """serve --dry-run shows it as a failed check instead of dying on a ZeroDivisionError."""
    from turbo.profiles import Overrides

    model = tmp_path / "m"
    model.mkdir()
    cfg = {k: 4 for k in memfit.ModelShape.__dataclass_fields__}
    cfg["full_attention_interval"] = 0
    (model / "config.json").write_text(json.dumps(cfg))
    prep = serve.prepare("vanilla", load_pins(), Overrides(model=str(model)),
                         probe=spark_probe(tmp_path), environ={})
    fit = next(c for c in prep.checks if c.name == "memory fit")
    assert fit.status == "fail" and "full_attention_interval" in fit.detail


def test_other_architectures_still_use_the_pinned_shape(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    shape, source = memfit.load_shape(tmp_path, load_book().section("model_shape"))
    assert source.endswith("[model_shape]") and shape.full_attention_interval == 4


def test_plan_still_builds(tmp_path: Path) -> None:
    assert plan_of("mtp", tmp_path).argv[:2] == ["vllm", "serve"]
