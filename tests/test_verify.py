"""verify against the local vLLM stand-in: healthy, wrong name, 500s, never healthy, API key."""

from __future__ import annotations

import json

import pytest

from tests.openai_server import running
from turbo import endpoint, verify


def ep_of(srv: object, key: str | None = None) -> endpoint.Endpoint:
    return endpoint.Endpoint(srv.base_url, key)  # type: ignore[attr-defined]


def test_all_checks_pass_against_a_healthy_server() -> None:
    with running(spec_tokens=2) as srv:
        steps = verify.run(ep_of(srv), "qwen3-next")
    assert [s.status for s in steps] == ["pass"] * 4
    by = {s.name: s for s in steps}
    assert "'42'" in by["chat"].detail
    assert "speculative acceptance" in by["metrics"].detail
    assert verify.exit_code(steps) == 0
    text = verify.render(steps, ep_of(srv))
    assert "OK" in text and "chat" in text


def test_wrong_served_name_fails_models_and_chat() -> None:
    with running() as srv:
        steps = verify.run(ep_of(srv), "llama")
    by = {s.name: s.status for s in steps}
    assert by["models"] == "fail" and by["chat"] == "fail" and by["health"] == "pass"
    assert verify.exit_code(steps) == 1


def test_500s_fail_the_chat_check() -> None:
    with running(mode="errors") as srv:
        steps = verify.run(ep_of(srv), "qwen3-next")
    chat = next(s for s in steps if s.name == "chat")
    assert chat.status == "fail" and "HTTP 500" in chat.detail
    assert verify.exit_code(steps) == 1


def test_never_healthy_skips_the_rest() -> None:
    with running(mode="never-healthy") as srv:
        steps = verify.run(ep_of(srv), "qwen3-next", wait_s=1.5)
    assert [s.status for s in steps] == ["fail", "skip", "skip", "skip"]
    assert steps[0].seconds >= 1.0
    data = json.loads(verify.to_json(steps, ep_of(srv)))
    assert data["ok"] is False


def test_nothing_listening() -> None:
    steps = verify.run(endpoint.Endpoint("http://127.0.0.1:9"), "qwen3-next")
    assert steps[0].status == "fail" and "no answer" in steps[0].detail


@pytest.mark.parametrize(("client_key", "ok"), [("s3cret-key", True), (None, False)])
def test_api_key_is_sent(client_key: str | None, ok: bool) -> None:
    with running(api_key="s3cret-key") as srv:
        steps = verify.run(ep_of(srv, client_key), "qwen3-next")
    assert (verify.exit_code(steps) == 0) is ok


def test_metrics_parser_sums_label_sets() -> None:
    text = ('# TYPE x counter\nvllm:x_total{engine="0",model_name="m"} 2.0\n'
            'vllm:x_total{engine="1",model_name="m"} 3.0\nplain 7 1700000000\n')
    m = endpoint.parse_metrics(text)
    assert m == {"vllm:x_total": 5.0, "plain": 7.0}
