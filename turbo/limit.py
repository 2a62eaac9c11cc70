"""The roofline of a model directory on this machine: read the checkpoint, count its bytes per
token, and take the bandwidth (given, stated or measured here). What bench and
`bench --roofline` divide by; the arithmetic itself is plain data (:mod:`turbo.ceiling`,
:mod:`turbo.traffic`)."""

from __future__ import annotations

from pathlib import Path

from turbo import bandwidth, checkpoint_read, traffic_count
from turbo.ceiling import CellLimit as CellLimit
from turbo.ceiling import Limit as Limit
from turbo.ceiling import cell_context as cell_context
from turbo.ceiling import describe as describe
from turbo.ceiling import for_cell as for_cell
from turbo.errors import TurboError
from turbo.traffic import KV_BYTES, Traffic


def traffic(model_dir: Path, kv_dtype: str = "auto") -> Traffic:
    """The checkpoint's bytes per decoded token, from its config and safetensors headers."""
    config, quant, tensors = checkpoint_read.read_checkpoint(model_dir)
    return traffic_count.traffic_of(config, quant, tensors, kv_dtype, model=str(model_dir))


def default_kv_dtype() -> str:
    """The serve profiles' --kv-cache-dtype (fp8 on the Spark), else vLLM's "auto"."""
    from turbo.profiles import load_book

    try:
        value = load_book().defaults_args.get("kv-cache-dtype", "auto")
    except TurboError:
        return "auto"
    return str(value) if str(value) in KV_BYTES else "auto"


def load(
    model: str, bandwidth_gbs: float | None, kv_dtype: str, measure: bool
) -> tuple[Limit | None, str]:
    """The limit for bench's report, or None and why (bench runs without it). ``measure``:
    the server runs on this machine, so its GPU's figures are this machine's."""
    model_dir = Path(model)
    if not (model_dir / "config.json").is_file():
        return None, f"no checkpoint at {model_dir} (pass --model DIR for the roofline)"
    try:
        t = traffic(model_dir, kv_dtype or default_kv_dtype())
    except TurboError as err:
        return None, f"roofline not computed: {err.line()}"
    if measure:
        bw = bandwidth.bandwidth(bandwidth_gbs, measure=True)
    else:
        # The server runs elsewhere: this machine's GPU (or lack of one) says nothing about it.
        bw = bandwidth.Bandwidth(
            None, None, None, "the server is on another machine", given_gbs=bandwidth_gbs
        )
    if not bw.used_gbs:
        return None, (
            f"no bandwidth known for {bw.gpu or 'this machine'} and none measured "
            f"({bw.measured_how}); pass --bandwidth-gbs (GB10: 273)"
        )
    return Limit(t, bw), ""
