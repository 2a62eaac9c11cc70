"""Qwen3-Next on vLLM 0.16's CPU backend: the two pieces that only exist for GPUs, in PyTorch.

vLLM loads this through the ``vllm.general_plugins`` entry point in every process it starts
(API server, engine core, workers). On a CPU platform it replaces:

1. ``dispatch_cpu_unquantized_gemm``: it unpacks ``N, K = layer.weight.size()``, but the
   gated delta-net's ``conv1d`` is a linear layer whose weight vLLM reshapes to 3-D
   ``(conv_dim, 1, kernel)``; loading the model fails there. Layers with a non-2-D weight get
   plain ``torch.nn.functional.linear`` (they are never called as a GEMM anyway).
2. ``Qwen3NextGatedDeltaNet._forward_core``: the causal conv1d, the gating and the
   gated-delta-rule recurrence are Triton kernels, which do not run without a GPU. Ours does
   the same maths in float32 PyTorch, one sequence and one token at a time (fine for the tiny
   test model), reading and writing vLLM's own conv and SSM state caches in their layouts:
   conv state ``(slots, conv_dim, kernel - 1)`` (the model's transposed view), SSM state
   ``(slots, v_heads, v_dim, k_dim)``.

3. ``RMSNormGated.forward_native`` (what the CPU runs; GPUs use a Triton kernel) returns float32
   when its weight is float32 and the activations bfloat16, and the next GEMM fails with
   "expected m1 and m2 to have the same dtype" in a bfloat16 model. Its output is cast back to
   the input's dtype, as the Triton kernel does.

Speculative decoding is not handled: vLLM's CPU runner refuses it before this code runs.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("turbo_cpu_gdn")
_DONE = False


def register() -> None:
    global _DONE
    if _DONE:
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    _patch_gemm_dispatch()
    _patch_gdn()
    _patch_gated_norm()
    _DONE = True
    log.info("turbo_cpu_gdn: gated delta-net and conv1d dispatch replaced with PyTorch")


def _patch_gemm_dispatch() -> None:
    import torch
    from vllm.model_executor.layers import utils

    original = utils.dispatch_cpu_unquantized_gemm
    if getattr(original, "_turbo_cpu_gdn", False):
        return

    def dispatch(layer: torch.nn.Module, remove_weight: bool) -> None:
        if layer.weight.dim() != 2:
            layer.cpu_linear = torch.nn.functional.linear
            return
        original(layer, remove_weight)

    dispatch._turbo_cpu_gdn = True  # type: ignore[attr-defined]
    # linear.py imports the name from the module at call time, so the module attribute is
    # the one to replace.
    utils.dispatch_cpu_unquantized_gemm = dispatch


def _patch_gdn() -> None:
    from vllm.model_executor.models import qwen3_next

    qwen3_next.Qwen3NextGatedDeltaNet._forward_core = _forward_core


def _patch_gated_norm() -> None:
    from vllm.model_executor.layers.layernorm import RMSNormGated

    original = RMSNormGated.forward_native
    if getattr(original, "_turbo_cpu_gdn", False):
        return

    def forward_native(self: Any, x: Any, z: Any = None) -> Any:
        return original(self, x, z).to(x.dtype)

    forward_native._turbo_cpu_gdn = True  # type: ignore[attr-defined]
    RMSNormGated.forward_native = forward_native


def _l2norm(x: Any, eps: float = 1e-6) -> Any:
    import torch

    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def _forward_core(self: Any, mixed_qkv: Any, b: Any, a: Any, core_attn_out: Any) -> None:
    import torch
    import torch.nn.functional as F
    from vllm.forward_context import get_forward_context

    ctx = get_forward_context()
    meta = ctx.attn_metadata
    if meta is None:  # the profiling run
        return
    meta = meta[self.prefix]
    if meta.spec_sequence_masks is not None:
        raise NotImplementedError("turbo_cpu_gdn: speculative decoding is not supported")
    cache = self.kv_cache[ctx.virtual_engine]
    conv_state = cache[0].transpose(-1, -2)  # (slots, conv_dim, kernel - 1)
    ssm_state = cache[1]  # (slots, v_heads, v_dim, k_dim)
    n = meta.num_actual_tokens
    x_all = mixed_qkv[:n].float()
    a_all = a[:n].float()
    b_all = b[:n].float()
    weight = self.conv1d.weight.view(self.conv1d.weight.size(0), self.conv1d.weight.size(2))
    weight = weight.float()
    bias = None if self.conv1d.bias is None else self.conv1d.bias.float()
    conv_dim, kernel = weight.shape
    key_dim = self.key_dim // self.tp_size
    value_dim = self.value_dim // self.tp_size
    hk = key_dim // self.head_k_dim
    hv = value_dim // self.head_v_dim
    dk, dv = self.head_k_dim, self.head_v_dim
    scale = dk**-0.5
    # g = -exp(A_log) * softplus(a + dt_bias), beta = sigmoid(b): the gating vLLM fuses.
    g_all = -torch.exp(self.A_log.float()) * F.softplus(a_all + self.dt_bias.float())
    beta_all = torch.sigmoid(b_all)

    num_seqs = meta.num_prefills + meta.num_decodes
    starts = meta.non_spec_query_start_loc
    slots = meta.non_spec_state_indices_tensor
    has_init = meta.has_initial_state if meta.num_prefills > 0 else None
    for i in range(num_seqs):
        s = int(starts[i]) if starts is not None else i
        e = int(starts[i + 1]) if starts is not None else i + 1
        slot = int(slots[i])
        if slot < 0 or e <= s:
            continue
        fresh = has_init is not None and not bool(has_init[i])
        # Causal depthwise conv over [kept state | new tokens], then SiLU.
        prev = (
            torch.zeros(conv_dim, kernel - 1, dtype=torch.float32)
            if fresh
            else conv_state[slot].float()
        )
        seq = torch.cat([prev, x_all[s:e].transpose(0, 1)], dim=1)
        y = F.conv1d(seq.unsqueeze(0), weight.unsqueeze(1), bias, groups=conv_dim)[0]
        y = F.silu(y).transpose(0, 1)  # (tokens, conv_dim)
        conv_state[slot].copy_(seq[:, -(kernel - 1) :].to(conv_state.dtype))

        q, k, v = torch.split(y, [key_dim, key_dim, value_dim], dim=-1)
        q = _l2norm(q.reshape(-1, hk, dk)).repeat_interleave(hv // hk, dim=1) * scale
        k = _l2norm(k.reshape(-1, hk, dk)).repeat_interleave(hv // hk, dim=1)
        v = v.reshape(-1, hv, dv)
        state = (
            torch.zeros(hv, dv, dk, dtype=torch.float32) if fresh else ssm_state[slot].float()
        )
        out = torch.empty(e - s, hv, dv, dtype=torch.float32)
        for t in range(e - s):
            state = state * torch.exp(g_all[s + t]).view(hv, 1, 1)
            recalled = torch.einsum("hvk,hk->hv", state, k[t])
            delta = (v[t] - recalled) * beta_all[s + t].view(hv, 1)
            state = state + delta.unsqueeze(-1) * k[t].unsqueeze(-2)
            out[t] = torch.einsum("hvk,hk->hv", state, q[t])
        ssm_state[slot].copy_(state.to(ssm_state.dtype))
        core_attn_out[s:e] = out.to(core_attn_out.dtype)
