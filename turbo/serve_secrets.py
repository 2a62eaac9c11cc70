"""Secrets given to vLLM travel in its environment, not on its command line.

A process's command line is readable by every user of the machine (``ps``, /proc/PID/cmdline)
and vLLM logs every non-default argument at startup, so ``invoke serve -- --api-key K`` would
put K in the process table and in the serve log. vLLM reads the same settings from its
environment (``VLLM_API_KEY``; ``HF_TOKEN`` for the hub), which only the owner can read; a
single value given for one of these flags is moved there. Every other secret-looking value
(a ``--*-token``/``--*-secret``/``--*-password`` flag's, or a token-shaped word) stays where the
user put it and is masked in everything the product prints or logs, vLLM's own output included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from turbo.redact import argv_secrets, is_secret_key

# vLLM 0.16: api_server.py reads envs.VLLM_API_KEY when --api-key is absent; the hub client
# reads HF_TOKEN when --hf-token is absent.
ENV_FOR_FLAG = {"--api-key": "VLLM_API_KEY", "--hf-token": "HF_TOKEN"}


def move_to_env(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """``argv`` without single values of ENV_FOR_FLAG's flags, and those values by env name.

    Several keys (``--api-key K1 K2``: vLLM accepts a list) cannot travel in one variable, so
    they stay on the command line, masked."""
    out: list[str] = []
    env: dict[str, str] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        flag, eq, value = word.partition("=")
        name = ENV_FOR_FLAG.get(flag)
        if name is not None and name not in env:
            if eq and value:
                env[name] = value
                i += 1
                continue
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            after = argv[i + 2] if i + 2 < len(argv) else "-"
            if not eq and nxt and not nxt.startswith("-") and after.startswith("-"):
                env[name] = nxt
                i += 2
                continue
        out.append(word)
        i += 1
    return out, env


def secret_values(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """Every secret a launch carries: to be masked in whatever the server prints."""
    return argv_secrets(argv) + [v for k, v in env.items() if v and is_secret_key(k)]
