"""Tiny random checkpoints, made offline in seconds: what the CPU e2e tests and `demo` serve.

Two shapes, both real Hugging Face layouts that vLLM loads unchanged:

- ``qwen3-next``: Qwen3-Next's hybrid architecture at toy size (hidden 128, 4 layers: 3 gated
  delta-net linear-attention layers and 1 full-attention layer, 8 routed experts + a shared
  one), with the multi-token-prediction weights in the layout vLLM 0.16 loads for MTP
  speculative decoding (``mtp.fc``, ``mtp.pre_fc_norm_*``, ``mtp.norm``, ``mtp.layers.0.*``).
- ``qwen3``: a dense Qwen3 of the same width, for what does not need the hybrid.

Both get a byte-level BPE tokenizer trained here on a few sentences (vocab 512) with a ChatML
chat template, so `/v1/chat/completions` works. Weights are random but seeded, then taught
in a few seconds the two chat answers the product asks for (verify's "17 + 25" -> "42", the
warm-up's "Say OK." -> "OK"), so `invoke verify` passes against the real server; everything
else it says is noise. Greedy output is deterministic and is compared token for token with
transformers.

Needs torch, transformers and tokenizers (the vLLM CPU environment has them); imported lazily
so ``turbo`` itself stays light. Run as ``python -m turbo.tiny_model {qwen3-next,qwen3} DIR``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

VOCAB = 512
HIDDEN = 128
# Long enough for the bench's 128-token prompts and 512-token answers; short enough that its
# 2048-token cells do not fit and must be skipped (what a small server looks like).
MAX_POSITIONS = 2048
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
KINDS = ("qwen3-next", "qwen3")

# ChatML, as Qwen's own templates render it (system, user and assistant turns).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CORPUS = (
    "The DGX Spark serves Qwen3-Next with vLLM on one GB10 chip.",
    "A tiny model answers quickly, but its words are random.",
    "Say OK. The quick brown fox jumps over the lazy dog.",
    "Count from one to ten: one two three four five six seven eight nine ten.",
    "Speculative decoding drafts tokens with multi-token prediction and verifies them.",
    "Tensor parallelism splits each layer across two nodes over RoCE.",
    "What is the capital of France? Paris is the capital of France.",
    "Write a haiku about memory bandwidth and unified memory.",
)


def _tokenizer(out: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(CORPUS) * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return fast


def _common(tok: Any) -> dict[str, Any]:
    return {
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "max_position_embeddings": MAX_POSITIONS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
        "bos_token_id": None,
        "torch_dtype": "float32",
    }


def make(kind: str, out: Path, seed: int = 0) -> Path:
    """Write a tiny ``kind`` checkpoint (config, safetensors, tokenizer) into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(out)
    torch.manual_seed(seed)
    if kind == "qwen3":
        from transformers import Qwen3Config

        config: Any = Qwen3Config(
            **_common(tok), intermediate_size=256, num_hidden_layers=2, rope_theta=10000.0
        )
    else:
        from transformers import Qwen3NextConfig

        config = Qwen3NextConfig(
            **_common(tok),
            intermediate_size=256,
            num_hidden_layers=4,
            layer_types=["linear_attention"] * 3 + ["full_attention"],
            full_attention_interval=4,
            linear_conv_kernel_dim=4,
            linear_key_head_dim=32,
            linear_value_head_dim=32,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=64,
            shared_expert_intermediate_size=64,
            decoder_sparse_step=1,
            norm_topk_prob=True,
            mlp_only_layers=[],
            partial_rotary_factor=0.25,
            rope_theta=10000.0,
            num_nextn_predict_layers=1,
        )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _spread(model, torch)
    _teach(model, tok, torch)
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True, max_shard_size="1MB")
    if kind == "qwen3-next":
        _add_mtp(model, out, torch)
    return out


def _spread(model: Any, torch: Any) -> None:
    """Random weights with enough spread that greedy decoding does not sit on ties.

    transformers initialises norms to ones and (for Qwen3-Next) A_log/dt_bias to fixed values;
    a normal draw with std 0.08 keeps the logits well separated in float32.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("A_log"):
                p.copy_(torch.log(torch.empty_like(p).uniform_(1.0, 8.0)))
            else:
                p.copy_(0.08 * torch.randn_like(p))


def lessons() -> list[tuple[str, str]]:
    """(question, answer) pairs the tiny model learns: what verify and serve's warm-up ask."""
    from turbo.known_answer import EXPECTED, QUESTION

    return [(QUESTION, EXPECTED), ("Say OK.", "OK")]


def _teach(model: Any, tok: Any, torch: Any, steps: int = 300) -> None:
    """Teach the chat answers (answer + <|im_end|>) by fitting the LM head only.

    With teacher forcing, the hidden state at each answer position is fixed by the random
    body, so fitting ``lm_head`` on those few states is a small logistic regression:
    milliseconds, where training the whole model through transformers' PyTorch fallback for
    the gated delta-net takes seconds per step on 2 cores.
    """
    feats, targets, examples = [], [], []
    with torch.no_grad():
        for question, answer in lessons():
            prompt = tok.apply_chat_template(
                [{"role": "user", "content": question}],
                tokenize=False,
                add_generation_prompt=True,
            )
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            a_ids = tok(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p_ids + a_ids])
            hidden = model.model(input_ids=ids).last_hidden_state[0]
            n = len(p_ids)
            feats.append(hidden[n - 1 : n - 1 + len(a_ids)])
            targets += a_ids
            examples.append((ids, None, n, a_ids))
    x = torch.cat(feats)
    y = torch.tensor(targets)
    head = model.lm_head.weight
    weight = head.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([weight], lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(x @ weight.T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        head.copy_(weight)
    if not _knows(model, examples, torch):
        raise RuntimeError("the tiny model did not learn its chat answers")


def _knows(model: Any, examples: list[Any], torch: Any) -> bool:
    model.eval()
    with torch.no_grad():
        for ids, _, n_prompt, a_ids in examples:
            gen = model.generate(ids[:, :n_prompt], max_new_tokens=len(a_ids), do_sample=False)
            if gen[0, n_prompt:].tolist() != a_ids:
                return False
    return True


def _add_mtp(model: Any, out: Path, torch: Any) -> None:
    """Append MTP weights (vLLM 0.16's names) as one more shard, listed in the index.

    The MTP block is one full-attention decoder layer plus its own fc/norms; we seed it from
    the model's full-attention layer with fresh noise (transformers ignores ``mtp.*``).
    """
    from safetensors.torch import save_file

    cfg = model.config
    full = next(i for i, t in enumerate(cfg.layer_types) if t == "full_attention")
    tensors: dict[str, Any] = {}
    prefix = f"model.layers.{full}."
    for name, p in model.state_dict().items():
        if name.startswith(prefix):
            tensors["mtp.layers.0." + name[len(prefix) :]] = (
                p + 0.02 * torch.randn_like(p)
            ).contiguous()
    h = cfg.hidden_size
    tensors["mtp.fc.weight"] = 0.08 * torch.randn(h, 2 * h)
    for norm in ("mtp.pre_fc_norm_hidden", "mtp.pre_fc_norm_embedding", "mtp.norm"):
        tensors[f"{norm}.weight"] = 1.0 + 0.1 * torch.randn(h)
    shard = "model-mtp.safetensors"
    save_file(tensors, str(out / shard), metadata={"format": "pt"})
    index_path = out / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
    else:
        # One shard only: save_pretrained wrote model.safetensors without an index.
        from safetensors import safe_open

        with safe_open(str(out / "model.safetensors"), "pt") as fh:
            names = list(fh.keys())
        index = {"metadata": {}, "weight_map": dict.fromkeys(names, "model.safetensors")}
    index["weight_map"].update(dict.fromkeys(tensors, shard))
    index["metadata"]["total_size"] = sum(
        (out / f).stat().st_size for f in set(index["weight_map"].values())
    )
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def greedy(model_dir: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy continuation of ``prompt_ids``: the reference vLLM must match."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        ids = torch.tensor([prompt_ids])
        gen = model.generate(
            ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=model.config.pad_token_id,
        )
    return [int(t) for t in gen[0, len(prompt_ids) :]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m turbo.tiny_model", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="write a tiny checkpoint")
    mk.add_argument("kind", choices=KINDS)
    mk.add_argument("out", type=Path)
    mk.add_argument("--seed", type=int, default=0)
    gr = sub.add_parser("greedy", help="transformers' greedy token ids (JSON) for a prompt")
    gr.add_argument("model", type=Path)
    gr.add_argument("--ids", required=True, help="JSON list of prompt token ids")
    gr.add_argument("--max-new-tokens", type=int, default=16)
    args = ap.parse_args(argv)
    if args.cmd == "make":
        print(make(args.kind, args.out, args.seed))
    else:
        print(json.dumps(greedy(args.model, json.loads(args.ids), args.max_new_tokens)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
