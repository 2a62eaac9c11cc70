"""Everything serve checks before a launch, one row per fact, and the rows doctor shares.

A launch stops at the first FAIL (named in one line); warnings are printed and do not stop it.
Where doctor asks the same question (the vLLM build, the model, the GPU, the port) both take
the verdict from one function; only the weight may differ on purpose: serve is about to launch,
so a model not fetched yet is FAIL, while doctor is advice on a fresh host, so it is WARN.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turbo import cluster, endpoint, memfit, paths
from turbo.build_verdict import vllm_build_check
from turbo.checks import FAIL, PASS, WARN, Check, failed
from turbo.console import render_table
from turbo.errors import TurboError
from turbo.host import Host, check_port, nvidia_smi
from turbo.manifest import check_local, read_manifest
from turbo.profiles import Profile, ProfileBook
from turbo.serve_types import Plan

FETCH_FIX = (
    "Run `pixi run fetch-model` (~45 GB; it resumes), or point MODEL (serve: --model) at a "
    "complete copy."
)


@dataclass
class Probe:
    """Everything serve asks of the machine; tests replace fields (``gpu``: the GPU's name)."""

    host: Host = field(default_factory=Host)
    sysfs: Path = Path("/sys")
    ipv4: cluster.Ipv4Of = cluster.ipv4_of
    gpu: Callable[[], str | None] | None = None

    def gpu_info(self) -> tuple[str | None, str | None]:
        """(name, compute capability) of GPU 0; the capability is None when only the name is
        known, both None without a GPU."""
        if self.gpu is not None:
            return self.gpu(), None
        smi = nvidia_smi(self.host)
        return (smi[0], smi[1]) if smi else (None, None)


# ------------------------------------------------------------------------------ shared facts
def model_check(model_dir: Path, *, blocking: bool) -> Check:
    """Manifest present and every file at its recorded size (sizes only: cheap). A model not
    fetched yet is FAIL when ``blocking`` (a launch), else WARN; an incomplete copy or an
    unusable manifest is FAIL either way."""
    absent = FAIL if blocking else WARN
    if not model_dir.is_dir():
        return Check("model", absent, f"{model_dir} does not exist", FETCH_FIX)
    try:
        manifest = read_manifest(model_dir)
        problems = check_local(model_dir, manifest) if manifest is not None else []
    except TurboError as err:
        # Which file and what to do: the manifest's own error carries both.
        return Check("model", FAIL, f"{err.what}: {err.why}", err.fix)
    if manifest is None:
        detail = f"no model manifest in {model_dir} (the model was never fully fetched)"
        return Check("model", absent, detail, FETCH_FIX)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return Check(
            "model",
            FAIL,
            f"incomplete copy in {model_dir}: {problems[0]}{more}",
            "Run `pixi run fetch-model`; it resumes and re-fetches what is missing.",
        )
    return Check("model", PASS, f"{manifest.repo}@{manifest.revision[:12]} complete in {model_dir}")


def model_problems(model_dir: Path) -> list[str]:
    """What is missing or wrong in the model directory; empty when it is complete."""
    if not model_dir.is_dir():
        return [f"{model_dir} does not exist"]
    try:
        return check_local(model_dir)
    except TurboError as err:
        return [f"{err.what}: {err.why}"]  # names the file (a corrupt or crafted manifest)


def gpu_check(name: str | None, capability: str | None = None) -> Check:
    """GPU 0 as nvidia-smi names it: FAIL when none answers; WARN when its compute capability
    is not GB10's 12.1 (kernels still run, but the arch list and figures target GB10)."""
    if not name:
        return Check(
            "gpu",
            FAIL,
            "no NVIDIA GPU visible (nvidia-smi missing or failed)",
            "Run on the DGX Spark; check the driver with `nvidia-smi`.",
        )
    if capability is None:
        return Check("gpu", PASS, name)
    if capability == "12.1":
        return Check("gpu", PASS, f"{name}, compute capability {capability}")
    return Check(
        "gpu",
        WARN,
        f"{name}, compute capability {capability} (GB10 is 12.1)",
        "Kernels still run; arch list and speed figures target GB10.",
    )


def build_check(built: Mapping[str, Any] | None, device: str = "cuda") -> Check:
    """A usable stamp for ``device`` ("cuda": with GB10 code; "cpu": a CPU build; "any"); the
    same verdict doctor gives, weighed as a launch's gate (FAIL)."""
    return vllm_build_check(built, device, blocking=True)


# ------------------------------------------------------------------------------ memory
def weights_bytes(model_dir: Path, fallback_gb: float) -> tuple[int, str]:
    try:
        manifest = read_manifest(model_dir)
    except TurboError:
        manifest = None
    if manifest is not None and manifest.weights_bytes:
        return manifest.weights_bytes, "model manifest"
    return int(fallback_gb * 1e9), "pins [model] size_gb (no manifest yet)"


def memory_fit(
    plan: Plan, prof: Profile, book: ProfileBook, probe: Probe, size_gb: float
) -> memfit.MemFit:
    mem = book.section("memory")
    info = probe.host.meminfo_gb()
    total = info.get("MemTotal") or float(mem.get("unified_gb", 128))
    shape, _ = memfit.load_shape(Path(plan.model), book.section("model_shape"))
    wbytes, _ = weights_bytes(Path(plan.model), size_gb)
    return memfit.estimate(
        weights_bytes=wbytes,
        tensor_parallel=int(prof.args.get("tensor-parallel-size", 1)),
        utilization=float(prof.args.get("gpu-memory-utilization", 0.9)),
        max_model_len=int(prof.args.get("max-model-len", 262144)),
        kv_dtype=str(prof.args.get("kv-cache-dtype", "auto")),
        shape=shape,
        total_gb=total,
        available_gb=info.get("MemAvailable"),
        overhead_gb=float(mem.get("overhead_gb", 8.0)),
        max_safe_utilization=float(mem.get("max_safe_utilization", 0.85)),
    )


def _memory_fit_check(
    plan: Plan, prof: Profile, book: ProfileBook, probe: Probe, size_gb: float
) -> Check:
    try:
        fit = memory_fit(plan, prof, book, probe, size_gb)
    except TurboError as err:
        return Check("memory fit", FAIL, f"{err.what} {err.why}", err.fix)
    return Check("memory fit", fit.status, fit.detail, fit.fix)


def cpu_memory_fit(plan: Plan, book: ProfileBook, probe: Probe, size_gb: float) -> Check:
    """vLLM's CPU build: weights + its KV cache space + process overhead in available RAM."""
    wbytes, source = weights_bytes(Path(plan.model), size_gb)
    kv_gb = float(plan.env.get("VLLM_CPU_KVCACHE_SPACE") or 4)
    overhead = float(book.section("memory").get("cpu_overhead_gb", 3.0))
    need = wbytes / 1e9 + kv_gb + overhead
    avail = probe.host.meminfo_gb().get("MemAvailable")
    detail = (
        f"needs ~{need:.1f} GB (weights {wbytes / 1e9:.2f} GB from {source}, KV cache "
        f"{kv_gb:g} GB, overhead {overhead:g} GB)"
    )
    if avail is None:
        return Check("memory fit", WARN, detail + "; MemAvailable unreadable", "")
    if need > avail:
        return Check(
            "memory fit",
            FAIL,
            f"{detail}, only {avail:.1f} GB available",
            "Free memory, or lower VLLM_CPU_KVCACHE_SPACE (--set env.VLLM_CPU_KVCACHE_SPACE=1).",
        )
    return Check("memory fit", PASS, f"{detail}, {avail:.1f} GB available")


def _tensor_parallel(argv: list[str]) -> int:
    size = 1
    for i, word in enumerate(argv):
        flag, eq, value = word.partition("=")
        if flag in ("--tensor-parallel-size", "-tp"):
            text = value if eq else (argv[i + 1] if i + 1 < len(argv) else "1")
            size = int(text) if text.isdigit() else size
    return size


def cpu_binding_check(plan: Plan, probe: Probe, environ: Mapping[str, str]) -> Check | None:
    """vLLM's CPU backend binds each tensor-parallel worker's threads to a NUMA node of its
    own ("auto"); with fewer NUMA nodes than workers on one host it stops with "Not enough
    allowed NUMA nodes ... Please try to bind threads manually" (seen with TP=2 on a 1-node
    host). Say so before the launch; two hosts of one node each may well be fine."""
    tp = _tensor_parallel(plan.argv)
    if (
        tp < 2
        or plan.env.get("VLLM_CPU_OMP_THREADS_BIND")
        or environ.get("VLLM_CPU_OMP_THREADS_BIND")
    ):
        return None
    nodes = len(list((probe.sysfs / "devices" / "system" / "node").glob("node[0-9]*")))
    if nodes == 0 or nodes >= tp:
        return None
    return Check(
        "cpu binding",
        WARN,
        f"{tp} tensor-parallel CPU workers and {nodes} NUMA node(s) here: vLLM's automatic "
        "binding needs one node per worker on a host",
        "Bind by hand, one core list per worker: --set 'env.VLLM_CPU_OMP_THREADS_BIND=0|1'.",
    )


# ------------------------------------------------------------------------------ cluster
def _ray_python(probe: Probe, built: Mapping[str, Any] | None) -> str:
    """The interpreter that has Ray: the adopted vLLM's, else the one beside `ray` on PATH."""
    exe = (built or {}).get("python_exe")
    if isinstance(exe, str) and Path(exe).is_file():
        return exe
    ray = probe.host.which("ray")
    if ray:
        beside = Path(ray).parent / "python"
        if beside.is_file():
            return str(beside)
    return sys.executable


def same_build_check(
    prof: Profile, probe: Probe, built: Mapping[str, Any] | None, digest: str | None
) -> Check:
    """Over Ray itself: every joined node must advertise this node's build ``digest``."""
    fix = (
        "Install the same build on both (`pixi run wheel` here, `pixi run install-wheel` "
        "there), then restart tp2-worker."
    )
    if digest is None:
        return Check("same build", FAIL, "this node has no usable build stamp", fix)
    want = int(str(prof.args.get("tensor-parallel-size", 2)))
    try:
        nodes = cluster.query_ray_nodes(_ray_python(probe, built), probe.host.run)
    except TurboError as err:
        return Check("same build", FAIL, err.why, err.fix)
    problems = cluster.same_build_problems(nodes, digest, want)
    if problems:
        return Check("same build", FAIL, "; ".join(problems), fix)
    return Check("same build", PASS, f"{len(nodes)} nodes on build {digest[:16]}")


def _ray_node_checks(plan: Plan, probe: Probe, built: Mapping[str, Any] | None) -> list[Check]:
    # A Ray node only advertises its build; tp2-serve's own checks judge the device.
    checks = [build_check(built, "any")]
    # An adopted vLLM's own `ray` (beside its `vllm`) is what the plan runs.
    first = Path(plan.argv[0])
    ray = str(first) if first.is_absolute() and first.is_file() else probe.host.which("ray")
    checks.append(
        Check("ray", PASS, ray)
        if ray
        else Check(
            "ray",
            FAIL,
            "ray not on PATH",
            "Use the pixi cluster environment (`pixi run -e cluster ...`).",
        )
    )
    return checks


def _network_checks(plan: Plan, roce_error: str | None) -> list[Check]:
    checks: list[Check] = []
    if roce_error:
        fix = "Pass --ifname and --hca (and --node-ip) to override."
        checks.append(Check("roce", FAIL, roce_error, fix))
    elif plan.roce:
        r = plan.roce
        found = f"{r['ifname']} ({','.join(r['hca'])}) {r['node_ip']}, found via {r['source']}"
        checks.append(Check("roce", PASS, found))
    if "VLLM_NCCL_SO_PATH" not in plan.env:
        checks.append(
            Check(
                "system nccl",
                WARN,
                "no system libnccl found",
                "The pip NCCL is reported to hang on two Sparks under load; "
                "install libnccl2 or set VLLM_NCCL_SO_PATH.",
            )
        )
    return checks


# ------------------------------------------------------------------------------ a server
def _has_api_key(plan: Plan, environ: Mapping[str, str]) -> bool:
    return bool(environ.get("VLLM_API_KEY") or plan.env.get("VLLM_API_KEY")) or any(
        w == "--api-key" or w.startswith("--api-key=") for w in plan.argv
    )


def _exposure_check(plan: Plan, environ: Mapping[str, str]) -> Check | None:
    if not plan.api or plan.host in endpoint.LOOPBACK:
        return None
    if _has_api_key(plan, environ):
        return Check("exposure", PASS, f"bound to {plan.host}, API key set")
    return Check(
        "exposure",
        WARN,
        f"bound to {plan.host} without an API key: anyone on the network can use it",
        "Export VLLM_API_KEY before serving.",
    )


def _server_checks(
    plan: Plan,
    prof: Profile,
    book: ProfileBook,
    probe: Probe,
    environ: Mapping[str, str],
    size_gb: float,
    built: Mapping[str, Any] | None,
) -> list[Check]:
    checks = [build_check(built, prof.device), model_check(Path(plan.model), blocking=True)]
    if plan.api:
        checks.append(check_port(probe.host, plan.host, plan.port, name="port", blocking=True))
    if prof.device == "cpu":
        checks.append(cpu_memory_fit(plan, book, probe, size_gb))
        bind = cpu_binding_check(plan, probe, environ)
        if bind is not None:
            checks.append(bind)
    else:
        checks.append(gpu_check(*probe.gpu_info()))
        checks.append(_memory_fit_check(plan, prof, book, probe, size_gb))
    exposure = _exposure_check(plan, environ)
    return checks + ([exposure] if exposure is not None else [])


def _state_dir_check() -> Check | None:
    # Logs and pid files go under TURBO_HOME: say so now, not after a 15-minute start.
    for where in (paths.log_dir(), paths.run_dir()):
        why = paths.unwritable_reason(where)
        if why:
            return Check("state dir", FAIL, why, paths.HOME_FIX)
    return None


def preflight(
    plan: Plan,
    prof: Profile,
    book: ProfileBook,
    probe: Probe,
    environ: Mapping[str, str],
    size_gb: float,
    roce_error: str | None = None,
    built: Mapping[str, Any] | None = None,
    digest: str | None = None,
) -> list[Check]:
    """Everything to check before a launch; ``built`` is this node's build stamp (read once),
    ``digest`` its identity (what every node of a Ray cluster must share)."""
    if plan.kind == "serve":
        checks = _server_checks(plan, prof, book, probe, environ, size_gb, built)
    else:
        checks = _ray_node_checks(plan, probe, built)
    if plan.kind == "serve" and plan.uses_ray:
        checks.append(same_build_check(prof, probe, built, digest))
    if prof.cluster:
        checks += _network_checks(plan, roce_error)
    state = _state_dir_check()
    return checks + ([state] if state is not None else [])


def render_checks(checks: list[Check]) -> str:
    return render_table(
        ["check", "status", "detail", "what to do"],
        [(c.name, c.status.upper(), c.detail, c.fix) for c in checks],
    )


def first_failure(checks: list[Check]) -> TurboError | None:
    bad = failed(checks)
    if not bad:
        return None
    c = bad[0]
    # Named, not "above": a launch prints this one line and no table.
    more = f" (also failed: {', '.join(b.name for b in bad[1:])})" if len(bad) > 1 else ""
    return TurboError(f"serve preflight: {c.name}", c.detail + more, c.fix)
