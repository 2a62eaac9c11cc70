"""Bytes per decoded token from tiny checkpoints made here, whose traffic is known by
construction: dense and MoE, with and without NVFP4 layers, tied and untied LM head, linear
attention state, KV cache, MTP; the bandwidth figures; `invoke bench --roofline`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.checkpoints import linear, linear_bytes, make_checkpoint, write_safetensors
from tests.conftest import REPO
from turbo import bandwidth, roofline
from turbo.errors import TurboError

H, V, FF = 32, 64, 64  # hidden, vocab, dense MLP width
HEADS, KVH, HD = 2, 1, 16


def dense(tied: bool, nvfp4: bool) -> tuple[dict[str, object], list[roofline.Tensor], int]:
    """Two dense layers; returns config, specs, and the weight bytes per token by hand."""
    cfg = {"hidden_size": H, "vocab_size": V, "num_hidden_layers": 2,
           "num_attention_heads": HEADS, "num_key_value_heads": KVH, "head_dim": HD,
           "tie_word_embeddings": tied}
    specs = [("model.embed_tokens.weight", "BF16", (V, H))]
    for i in range(2):
        p = f"model.layers.{i}"
        specs += [(f"{p}.input_layernorm.weight", "BF16", (H,)),
                  (f"{p}.post_attention_layernorm.weight", "BF16", (H,))]
        specs += linear(f"{p}.self_attn.q_proj", HEADS * HD, H, nvfp4)
        specs += linear(f"{p}.self_attn.k_proj", KVH * HD, H, nvfp4)
        specs += linear(f"{p}.self_attn.v_proj", KVH * HD, H, nvfp4)
        specs += linear(f"{p}.self_attn.o_proj", H, HEADS * HD, nvfp4)
        specs += linear(f"{p}.mlp.gate_proj", FF, H, nvfp4)
        specs += linear(f"{p}.mlp.up_proj", FF, H, nvfp4)
        specs += linear(f"{p}.mlp.down_proj", H, FF, nvfp4)
    specs += [("model.norm.weight", "BF16", (H,))]
    if not tied:
        specs += [("lm_head.weight", "BF16", (V, H))]
    per_layer = (2 * 2 * H
                 + linear_bytes(HEADS * HD, H, nvfp4) + 2 * linear_bytes(KVH * HD, H, nvfp4)
                 + linear_bytes(H, HEADS * HD, nvfp4)
                 + 2 * linear_bytes(FF, H, nvfp4) + linear_bytes(H, FF, nvfp4))
    # one embedding row + layers + final norm + the LM head (the embedding itself when tied)
    expected = 2 * H + 2 * per_layer + 2 * H + 2 * V * H
    return cfg, specs, expected  # type: ignore[return-value]


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("nvfp4", [False, True])
def test_dense_bytes_per_token(tmp_path: Path, tied: bool, nvfp4: bool) -> None:
    cfg, specs, expected = dense(tied, nvfp4)
    quant = {"quantization": {"quant_algo": "NVFP4", "group_size": 16,
                              "exclude_modules": ["lm_head"]}} if nvfp4 else None
    d = make_checkpoint(tmp_path / "m", cfg, specs, quant, shards=2)  # type: ignore[arg-type]
    t = roofline.traffic(d)
    assert t.weights_per_token == expected
    # KV: K and V, 2 attention layers, 1 head of 16, bf16 = 128 B per context token.
    assert t.kv_per_context_token == 2 * 2 * KVH * HD * 2
    assert roofline.bytes_per_token(t, 100) == expected + 100 * 128
    assert t.linear_state == 0 and t.mtp_per_draft == 0
    head = next(r for r in t.weight_rows if r.component == "lm head")
    assert head.per_token_total == 2 * V * H
    assert ("tied" in head.rule) is tied
    assert t.quant == ("NVFP4 (group 16)" if nvfp4 else "none (unquantised)")
    if nvfp4:
        attn = next(r for r in t.weight_rows if r.component == "attention")
        # q, k, v, o of two layers: 4 x 2 global-scale pairs of fp32
        assert attn.per_token[roofline.GLOBAL_SCALES] == 2 * 4 * 8
        assert attn.per_token[roofline.NVFP4] == 2 * (2 * H * HEADS * HD + 2 * H * KVH * HD) / 2
        assert attn.per_token[roofline.BLOCK_SCALES] == attn.per_token[roofline.NVFP4] / 8


def test_fp8_kv_halves_the_kv_reads(tmp_path: Path) -> None:
    cfg, specs, _ = dense(False, False)
    d = make_checkpoint(tmp_path / "m", cfg, specs)  # type: ignore[arg-type]
    assert roofline.traffic(d, "fp8").kv_per_context_token == 2 * 2 * KVH * HD * 1
    with pytest.raises(TurboError, match="not a KV-cache dtype"):
        roofline.traffic(d, "int3")


def moe_config(tied: bool = False) -> dict[str, object]:
    return {"model_type": "qwen3_next", "hidden_size": H, "vocab_size": V,
            "num_hidden_layers": 2, "full_attention_interval": 2,
            "num_attention_heads": HEADS, "num_key_value_heads": KVH, "head_dim": HD,
            "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 32, "linear_num_key_heads": 2,
            "linear_num_value_heads": 4, "linear_key_head_dim": 16,
            "linear_value_head_dim": 16, "linear_conv_kernel_dim": 4,
            "tie_word_embeddings": tied}


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("nvfp4", [True, False])
def test_moe_counts_top_k_shared_experts_and_state(tmp_path: Path, tied: bool,
                                                   nvfp4: bool) -> None:
    from tests.checkpoints import qwen3_next

    cfg = moe_config(tied)
    exclude = ["lm_head", "model.layers.*.mlp.gate", "model.layers.*.mlp.shared_expert_gate",
               "model.layers.*.linear_attn*", "mtp.layers.0*"]
    specs = qwen3_next(cfg, exclude if nvfp4 else ["*"])  # type: ignore[arg-type]
    d = make_checkpoint(tmp_path / "m", cfg, specs,
                        {"quantization": {"quant_algo": "NVFP4", "group_size": 16,
                                          "exclude_modules": exclude}} if nvfp4 else None)
    t = roofline.traffic(d)
    rows = {r.component: r for r in t.weight_rows}
    expert = 2 * linear_bytes(16, H, nvfp4) + linear_bytes(H, 16, nvfp4)
    # 2 layers x 8 experts stored; a token reads 2 of 8 per layer.
    assert rows["routed experts"].stored_total == 2 * 8 * expert
    assert rows["routed experts"].per_token_total == 2 * 2 * expert
    shared = 2 * linear_bytes(32, H, nvfp4) + linear_bytes(H, 32, nvfp4)
    assert rows["shared experts"].per_token_total == 2 * shared
    # routers (8 x H) and shared-expert gates (1 x H) are excluded: bf16.
    assert rows["routers"].per_token == {**dict.fromkeys(roofline.KINDS, 0.0),
                                         roofline.BF16: 2 * (8 * H + H) * 2}
    # Layer 0 is linear attention (bf16, excluded), layer 1 full attention (NVFP4).
    gdn = rows["linear attention"]
    assert gdn.per_token[roofline.NVFP4] == 0 and gdn.per_token[roofline.BF16] > 0
    assert (rows["attention"].per_token[roofline.NVFP4] > 0) is nvfp4
    # KV: one attention layer; state: one GDN layer of 4 x 16 x 16 recurrent + conv
    # (2*2*16 + 4*16) x 3, bf16, read and written.
    assert t.kv_per_context_token == 2 * 1 * KVH * HD * 2
    state = (4 * 16 * 16 + (2 * 2 * 16 + 4 * 16) * 3) * 2
    assert t.linear_state == state
    assert roofline.bytes_per_token(t, 0) == t.weights_per_token + 2 * state
    lm = 2 * V * H
    assert rows["lm head"].per_token_total == lm and t.lm_head == lm
    # MTP: not in a plain step; a draft reads the MTP layer (its top-2 of 8) and the LM head.
    assert "mtp" not in rows
    mtp_specs = [s for s in specs if s[0].startswith("mtp.")]
    mtp_experts = sum(roofline.DTYPE_BYTES[dt] * _n(sh) for n, dt, sh in mtp_specs
                      if ".experts." in n)
    mtp_fixed = sum(roofline.DTYPE_BYTES[dt] * _n(sh) for n, dt, sh in mtp_specs
                    if ".experts." not in n)
    assert t.mtp_per_draft == mtp_fixed + mtp_experts * 2 / 8 + lm
    # A verify pass of 3 tokens: distinct experts 8 * (1 - (6/8)^3) per layer, not 3 x 2.
    routed_all = 2 * 8 * expert
    step = roofline.pass_bytes(t, 3, 10, drafts=2)
    fixed = t.weights_per_token - routed_all * 2 / 8
    assert step == pytest.approx(fixed + routed_all * (1 - (6 / 8) ** 3)
                                 + 3 * (10 * t.kv_per_context_token + 2 * state)
                                 + 2 * t.mtp_per_draft)
    bw = 100.0
    assert roofline.mtp_roofline(t, bw, 10, 2.5, 2) == pytest.approx(bw * 1e9 * 2.5 / step)


def _n(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def test_written_files_are_real_safetensors(tmp_path: Path) -> None:
    specs = [*linear("a", 32, 32, True), ("b", "BF16", (3, 5))]
    write_safetensors(tmp_path / "x.safetensors", specs)
    with safe_open(str(tmp_path / "x.safetensors"), framework="numpy") as f:
        got = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape()))
               for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    assert got == {n: (dt, sh) for n, dt, sh in specs}
    assert [t.nbytes for t in roofline.read_header(tmp_path / "x.safetensors")] == [
        16 * 32, 32 * 2, 4, 4, 30]


def test_truncated_shard_and_escaping_index_are_one_line(tmp_path: Path) -> None:
    cfg, specs, _ = dense(False, False)
    d = make_checkpoint(tmp_path / "m", cfg, specs)  # type: ignore[arg-type]
    shard = next(d.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(TurboError, match="truncated"):
        roofline.traffic(d)
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "../outside.safetensors"}}))
    with pytest.raises(TurboError, match="outside the model directory"):
        roofline.traffic(d)
    with pytest.raises(TurboError, match=r"has no config\.json"):
        roofline.traffic(tmp_path)


def test_spec_bandwidth_by_gpu_name() -> None:
    assert bandwidth.spec_for("NVIDIA GB10") == 273.0
    assert bandwidth.spec_for("NVIDIA H200") == 4800.0
    assert bandwidth.spec_for("NVIDIA H100 PCIe") == 2000.0
    assert bandwidth.spec_for("NVIDIA H100 80GB HBM3") == 3350.0
    assert bandwidth.spec_for("Some GPU") is None and bandwidth.spec_for(None) is None
    bw = bandwidth.Bandwidth("NVIDIA GB10", 273.0, 240.0, "copy")
    assert bw.used_gbs == 273.0 and "stated" in bw.used_source
    assert bandwidth.Bandwidth(None, None, 240.0, "copy").used_gbs == 240.0
    assert bandwidth.Bandwidth("x", 273.0, None, "", given_gbs=250.0).used_gbs == 250.0


def test_measured_copy_says_why_not_without_a_gpu() -> None:
    gbs, how = bandwidth.measure_copy_gbs(nbytes=2**20, iters=2)
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        assert gbs is not None and gbs > 10 and "torch copy" in how
    else:
        assert gbs is None and ("torch" in how or "CUDA" in how)


def test_invoke_bench_roofline_prints_the_computation(tmp_path: Path) -> None:
    cfg, specs, expected = dense(False, True)
    d = make_checkpoint(tmp_path / "m", cfg, specs,  # type: ignore[arg-type]
                        {"quantization": {"quant_algo": "NVFP4", "group_size": 16,
                                          "exclude_modules": ["lm_head"]}})
    run = [sys.executable, "-m", "invoke", "bench", "--roofline", "--model", str(d),
           "--bandwidth-gbs", "273", "--context", "100", "--kv-dtype", "auto"]
    proc = subprocess.run([*run, "--json"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    total = expected + 100 * 128
    assert data["bytes_per_token"] == total
    assert data["roofline_tok_s"] == pytest.approx(273e9 / total)
    assert {c["component"] for c in data["components"]} >= {"embedding", "attention",
                                                             "lm head", "KV cache reads"}
    text = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "| lm head |" in text.stdout and "tok/s" in text.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = subprocess.run([sys.executable, "-m", "invoke", "bench", "--roofline", "--model",
                          str(empty)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "has no config.json" in bad.stderr


def test_bench_reports_each_cells_share_of_the_roofline(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from tests.checkpoints import qwen3_next
    from tests.openai_server import running
    from turbo import bench, endpoint, limit

    cfg = moe_config()
    d = make_checkpoint(tmp_path / "m", cfg, qwen3_next(cfg, ["lm_head"]))  # type: ignore[arg-type]
    t = roofline.traffic(d, "fp8")
    lim = limit.Limit(t, bandwidth.Bandwidth(None, None, None, "not measured", given_gbs=0.5))
    with running(spec_tokens=2, tokens_per_s=3000) as srv:
        rep = bench.run(endpoint.Endpoint(srv.base_url), "qwen3-next", model=str(d),
                        prompt_lens=[16], output_lens=[30], concurrency=[1, 2], repeats=1,
                        tool="builtin", seed={}, work=tmp_path / "raw", out=lambda _: None,
                        lim=lim)
    one, two = rep.cells
    ctx = 16 + 15
    assert one.context == ctx
    assert one.roofline_tok_s == pytest.approx(0.5e9 / roofline.bytes_per_token(t, ctx))
    # The stand-in accepts 2,1,2,1 of 2 drafts: 2.5 tokens per pass, 2 drafts per step.
    assert one.mean_accepted_len == pytest.approx(2.5) and one.draft_len == pytest.approx(2.0)
    assert one.mtp_roofline_tok_s == pytest.approx(roofline.mtp_roofline(t, 0.5, ctx, 2.5, 2))
    assert one.roofline_share == pytest.approx(one.decode_tok_s / one.mtp_roofline_tok_s)
    # Two streams share a pass over the weights: the total's roofline, not twice one stream's.
    assert two.roofline_tok_s == pytest.approx(0.5e9 * 2 / roofline.pass_bytes(t, 2, ctx))
    assert two.roofline_share == pytest.approx(two.aggregate_tok_s / two.roofline_tok_s)
    assert rep.roofline is not None and rep.roofline["bytes_per_token"] > 0
    files = bench.write(rep, tmp_path / "out")
    md = files["markdown"].read_text()
    assert "## Roofline" in md and "| routed experts | top-2 of 8 experts per layer |" in md
    assert "share of roofline" in md and f"{one.roofline_share:.0%}" in md
    assert files["chart"].read_bytes()[:4] == b"\x89PNG"
    assert "roofline:" in bench.render(rep)


def test_bench_without_a_checkpoint_says_why_there_is_no_roofline(tmp_path: Path) -> None:
    from turbo import limit

    lim, why = limit.load(str(tmp_path / "none"), 273.0, "fp8", measure=False)
    assert lim is None and "no checkpoint" in why and "--model" in why


def test_docs_estimate_for_qwen3_next_on_gb10() -> None:
    """docs/serve.md's estimate, recomputed from the synthesised headers: the docs' figures
    must be what the code says (they change when either does)."""
    from math import prod

    from tests.checkpoints import QWEN3_NEXT_80B, qwen3_next

    data = json.loads((REPO / "tests/data/qwen3_next_nvfp4_exclude_modules.json").read_text())
    docs = (REPO / "docs/serve.md").read_text()

    def traffic(exclude: list[str]) -> roofline.Traffic:
        specs = qwen3_next(QWEN3_NEXT_80B, exclude)
        tensors = [roofline.Tensor(n, dt, sh, prod(sh) * roofline.DTYPE_BYTES[dt])
                   for n, dt, sh in specs]
        quant = roofline.Quant("NVFP4", 16, tuple(exclude), "FP8", "synthesised")
        return roofline.traffic_of(QWEN3_NEXT_80B, quant, tensors, "fp8", "Qwen3-Next")

    t = traffic(data["exclude_modules"])
    assert roofline.table_markdown(t, 2048) in docs
    total = roofline.bytes_per_token(t, 2048)
    assert f"{roofline.roofline_tok_s(273, total):.1f} tok/s" in docs
    for acc in (2.0, 2.5):
        assert f"{roofline.mtp_roofline(t, 273, 2048, acc, 2):.1f} tok/s" in docs
    quantised_gdn = traffic([e for e in data["exclude_modules"] if "linear_attn" not in e])
    alt = roofline.bytes_per_token(quantised_gdn, 2048)
    assert f"{alt / 1e9:.2f} GB" in docs and f"{roofline.roofline_tok_s(273, alt):.1f}" in docs


def test_without_a_gpu_the_measured_figure_is_host_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A CPU-backend server reads its weights from host memory: that is the figure to show.
    monkeypatch.setattr(bandwidth, "gpu_name", lambda: None)
    monkeypatch.setattr(bandwidth, "measure_copy_gbs", lambda: (None, "no CUDA device"))
    bw = bandwidth.bandwidth()
    assert bw.measured_gbs is not None and bw.measured_gbs > 0.1
    assert "host memory copy" in bw.measured_how and bw.used_source == "measured copy"


def test_a_remote_server_needs_its_bandwidth_given(tmp_path: Path) -> None:
    from turbo import limit

    cfg, specs, _ = dense(False, False)
    d = make_checkpoint(tmp_path / "m", cfg, specs)  # type: ignore[arg-type]
    lim, why = limit.load(str(d), None, "auto", measure=False)
    assert lim is None and "another machine" in why and "--bandwidth-gbs" in why
    lim, why = limit.load(str(d), 273.0, "auto", measure=False)
    assert lim is not None and lim.gbs == 273.0 and why == ""
