"""Each patch's own test of intent: does a vLLM tree already do what the patch is for?

``git apply --reverse --check`` only recognises our exact lines. Upstream usually fixes the
same problem differently (0.23.0 gives Marlin ``12.0f`` rather than our ``12.0``; 0.25.0 keeps
``mtp.fc`` unquantised in the model file rather than in ModelOpt's exclusion logic), so the
matrix also asks each patch's question of the tree itself. Every check reads or evaluates the
tree's own code: the arch lists through vLLM's CMake functions (``cuda_archs``), the Python
through ``ast`` and evaluation of the relevant expressions, the CUDA header through the C
preprocessor as a plain sm_121 device pass would see it. None imports vLLM.

A check answers True (the tree does what the patch is for), False (it does not) or None (the
question cannot be asked of this tree: the code it inspects is not there), with one line
saying what it saw. ``INTENT`` maps patch file names to checks; a patch without an entry is
judged by ``git apply`` alone.
"""

from __future__ import annotations

import ast
import functools
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from types import MappingProxyType
from typing import Any

from turbo import cuda_archs, proc
from turbo.errors import TurboError

ARCH_LIST = "12.1a"  # GB10 as torch is asked to build for it
CUDA_VERSION = "13.0.88"


@dataclass(frozen=True)
class Intent:
    held: bool | None
    detail: str


class TreeFacts:
    """One vLLM tree and the facts the checks share (the arch report is computed once)."""

    def __init__(self, root: Path, arch_list: str = ARCH_LIST, cuda: str = CUDA_VERSION) -> None:
        self.root = root
        self.arch_list = arch_list
        self.cuda = cuda

    @functools.cached_property
    def archs(self) -> cuda_archs.ArchReport:
        return cuda_archs.resolve(self.root, self.arch_list, self.cuda)

    def py_files(self, under: str) -> Iterator[Path]:
        base = self.root / under
        return iter(sorted(base.rglob("*.py"))) if base.is_dir() else iter(())


# --------------------------------------------------------------------------- 0001 Marlin
MARLIN_KERNEL_LISTS = ("MARLIN_ARCHS", "MARLIN_BF16_ARCHS", "MARLIN_MOE_ARCHS")


def native_sm12x(archs: tuple[str, ...]) -> bool:
    """SASS for the sm_12x family (12.0, 12.0f, 12.1a ...), not only PTX for older archs."""
    return any(a.startswith("12.") and not a.endswith("+PTX") for a in archs)


def marlin_native(facts: TreeFacts) -> Intent:
    """0001: the Marlin and Marlin-MoE kernel lists give GB10 native sm_12x code."""
    got: dict[str, tuple[str, ...]] = {}
    for fam in facts.archs.families:
        if fam.var in MARLIN_KERNEL_LISTS:
            got[fam.var] = got.get(fam.var, ()) + fam.archs
    missing = [v for v in MARLIN_KERNEL_LISTS if v not in got]
    if missing:
        return Intent(None, f"no {', '.join(missing)} in this CMakeLists.txt")
    seen = ", ".join(f"{v}={';'.join(got[v]) or '-'}" for v in MARLIN_KERNEL_LISTS)
    ok = all(native_sm12x(got[v]) for v in MARLIN_KERNEL_LISTS)
    return Intent(ok, f"TORCH_CUDA_ARCH_LIST={facts.arch_list}: {seen}")


# --------------------------------------------------------------------------- 0002 MTP fc
MODELOPT = "vllm/model_executor/layers/quantization/modelopt.py"
QUANT_UTILS = "vllm/model_executor/layers/quantization/utils/quant_utils.py"
MTP_MODEL = "vllm/model_executor/models/qwen3_next_mtp.py"
# The defining trait of the NVFP4 Qwen3-Next checkpoints (facts.md section 3): of the MTP
# branch only the decoder layers are excluded; lm_head is excluded as in every ModelOpt export.
CHECKPOINT_EXCLUDES = ("lm_head", "mtp.layers.0*")


class _QuantConfigStub:
    """Stands in for vLLM's ModelOpt NVFP4 config where the model file asks for its name."""

    def get_name(self) -> str:
        return "modelopt_fp4"


def _def_source(text: str, mod: ast.Module, name: str, cls: str | None = None) -> str | None:
    body: list[ast.stmt] = mod.body
    if cls is not None:
        owner = next((n for n in mod.body if isinstance(n, ast.ClassDef) and n.name == cls), None)
        if owner is None:
            return None
        body = owner.body
    for node in body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            seg = ast.get_source_segment(text, node)
            return None if seg is None else _dedent(seg, node.col_offset)
    return None


def _dedent(seg: str, col: int) -> str:
    lines = seg.splitlines()
    return "\n".join([lines[0], *(ln[col:] if ln[:col].isspace() else ln for ln in lines[1:])])


def _modelopt_excludes_fc(root: Path) -> bool | None:
    """vLLM's own ModelOptQuantConfigBase.is_layer_excluded("mtp.fc"), cut out with ast."""
    mo_path, qu_path = root / MODELOPT, root / QUANT_UTILS
    if not mo_path.is_file() or not qu_path.is_file():
        return None
    mo, qu = mo_path.read_text(encoding="utf-8"), qu_path.read_text(encoding="utf-8")
    mo_mod, qu_mod = ast.parse(mo), ast.parse(qu)
    skipped = _def_source(qu, qu_mod, "is_layer_skipped")
    method = _def_source(mo, mo_mod, "is_layer_excluded", cls="ModelOptQuantConfigBase")
    if skipped is None or method is None:
        return None
    ns: dict[str, Any] = {"fnmatch": fnmatch, "MappingProxyType": MappingProxyType}
    try:
        from collections.abc import Mapping

        ns["Mapping"] = Mapping
        exec(compile(skipped, QUANT_UTILS, "exec"), ns)
        helper = _def_source(mo, mo_mod, "_mtp_branch_excluded")
        if helper is not None:
            exec(compile(helper, MODELOPT, "exec"), ns)
        exec(compile(method, MODELOPT, "exec"), ns)

        class Config:
            def __init__(self) -> None:
                self.exclude_modules = list(CHECKPOINT_EXCLUDES)
                self.packed_modules_mapping: dict[str, list[str]] = {}

        return bool(ns["is_layer_excluded"](Config(), "mtp.fc"))
    except Exception:  # another release's function needs more than we give it
        return None


def _model_keeps_fc_unquantized(root: Path) -> bool | None:
    """qwen3_next_mtp.py: is ``self.fc`` built with no quant config under ModelOpt NVFP4?

    The ``quant_config=`` argument of the ``self.fc = ...(...)`` call is evaluated as vLLM
    writes it (following one local assignment, e.g. ``fc_quant = None if ... else ...``) with
    ``quant_config`` standing for a ModelOpt NVFP4 config.
    """
    path = root / MTP_MODEL
    if not path.is_file():
        return None
    mod = ast.parse(path.read_text(encoding="utf-8"))
    for fn in ast.walk(mod):
        if not isinstance(fn, ast.FunctionDef):
            continue
        assigns: dict[str, ast.expr] = {}
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name):
                    assigns[target.id] = node.value
                elif (
                    isinstance(target, ast.Attribute)
                    and target.attr == "fc"
                    and isinstance(node.value, ast.Call)
                ):
                    kw = next((k for k in node.value.keywords if k.arg == "quant_config"), None)
                    if kw is None:
                        return True  # no quant config passed: unquantised
                    expr = kw.value
                    if isinstance(expr, ast.Name) and expr.id in assigns:
                        expr = assigns[expr.id]
                    try:
                        value = eval(  # one expression of vLLM's, no builtins
                            compile(ast.Expression(expr), MTP_MODEL, "eval"),
                            {"__builtins__": {}},
                            {"quant_config": _QuantConfigStub()},
                        )
                    except Exception:  # it needs more than quant_config
                        return None
                    return value is None
    return None


def mtp_fc_unquantized(facts: TreeFacts) -> Intent:
    """0002: with the checkpoint's excludes, mtp.fc is not built as an NVFP4 layer."""
    by_modelopt = _modelopt_excludes_fc(facts.root)
    by_model = _model_keeps_fc_unquantized(facts.root)
    if by_modelopt is None and by_model is None:
        return Intent(None, "neither ModelOpt's is_layer_excluded nor qwen3_next_mtp's fc found")
    how = []
    if by_modelopt:
        how.append("ModelOpt's is_layer_excluded excludes mtp.fc")
    if by_model:
        how.append("qwen3_next_mtp builds fc without a quant config under ModelOpt NVFP4")
    if how:
        return Intent(True, "; ".join(how))
    return Intent(False, "mtp.fc would be built as NVFP4 (excludes: mtp.layers.0*)")


# --------------------------------------------------------------------------- 0003 E2M1
NVFP4_UTILS = "nvfp4_utils.cuh"
# What a plain (not "a"/"f") sm_121 device pass defines; CUDA 13.0, NVFP4 enabled.
PLAIN_SM121 = (
    "-D__CUDACC__", "-D__CUDA_ARCH__=1210", "-DCUDART_VERSION=13000", "-DCUDA_VERSION=13000",
    "-DENABLE_NVFP4_SM100=1", "-DENABLE_NVFP4_SM120=1",
)  # fmt: skip
CPP_TIMEOUT_S = 120.0  # preprocessing one header takes well under a second
_CVT_E2M1 = re.compile(r"cvt\.[a-z0-9.]*e2m1x2")
_INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.MULTILINE)


def _expand(path: Path, seen: set[Path]) -> str:
    """The file with its quoted includes from the tree inlined and system includes dropped
    (the CUDA and torch headers are not needed to see which conversion code remains)."""
    if path in seen:
        return ""
    seen.add(path)
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _INCLUDE.match(line)
        if m is None:
            out.append(line)
        elif m.group(1) == '"' and (path.parent / m.group(2)).is_file():
            out.append(_expand((path.parent / m.group(2)).resolve(), seen))
        else:
            out.append("")
    return "\n".join(out)


def e2m1_builds_for_plain_sm121(facts: TreeFacts) -> Intent:
    """0003: the NVFP4 packers have a path without ``cvt...e2m1x2`` for plain sm_121.

    ptxas rejects that instruction off the "a"/"f" targets (facts.md section 2); the header is
    run through the C preprocessor as a plain sm_121 device pass sees it, and the instruction
    must not survive.
    """
    hits = sorted(facts.root.glob(f"csrc/**/{NVFP4_UTILS}"))
    if not hits:
        return Intent(None, f"no {NVFP4_UTILS} in csrc/")
    cpp = shutil.which("cpp")
    if cpp is None:
        return Intent(None, "cpp (the C preprocessor) is not installed")
    survivors = []
    for header in hits:
        text = _expand(header.resolve(), set())
        res = proc.capture(
            [cpp, "-P", "-w", "-x", "c++", *PLAIN_SM121, "-"], timeout=CPP_TIMEOUT_S, stdin=text
        )
        if not res.ok:
            return Intent(None, f"cpp failed on {header.relative_to(facts.root)}")
        if _CVT_E2M1.search(res.stdout):
            survivors.append(str(header.relative_to(facts.root)))
    if survivors:
        return Intent(False, f"plain sm_121 still gets cvt...e2m1x2 in {', '.join(survivors)}")
    return Intent(True, "no cvt...e2m1x2 left for plain sm_121 in " + ", ".join(
        str(h.relative_to(facts.root)) for h in hits))  # fmt: skip


# --------------------------------------------------------------------------- 0004 qkvz prefix
def _prefix_results(fn: ast.FunctionDef, probe: str) -> list[object]:
    """Evaluate every ``prefix=`` argument in ``fn`` with the parameter ``prefix`` = probe."""
    out: list[object] = []
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg != "prefix":
                    continue
                try:
                    out.append(
                        eval(  # one expression of vLLM's, no builtins
                            compile(ast.Expression(kw.value), "<prefix>", "eval"),
                            {"__builtins__": {}},
                            {"prefix": probe},
                        )
                    )
                except Exception:  # it needs more than prefix
                    out.append(None)
    return out


def qkvz_prefix_single(facts: TreeFacts) -> Intent:
    """0004: ``create_qkvz_proj`` passes the layer prefix through (no doubled suffix)."""
    probe = "model.layers.0.linear_attn.in_proj_qkvz"
    found = []
    for path in facts.py_files("vllm/model_executor"):
        text = path.read_text(encoding="utf-8", errors="replace")
        if "def create_qkvz_proj" not in text:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name == "create_qkvz_proj":
                rel = path.relative_to(facts.root)
                found.append((str(rel), _prefix_results(node, probe)))
    if not found:
        return Intent(None, "no create_qkvz_proj (the layer is built with its own prefix)")
    bad = [f for f, vals in found if any(v != probe for v in vals) or not vals]
    if bad:
        return Intent(False, f"create_qkvz_proj changes the prefix in {', '.join(bad)}")
    return Intent(True, "create_qkvz_proj passes the prefix through in " + ", ".join(
        f for f, _ in found))  # fmt: skip


Check = Callable[[TreeFacts], Intent]
INTENT: dict[str, Check] = {
    "0001-cmake-native-sm12x-marlin.patch": marlin_native,
    "0002-modelopt-unquantized-mtp-branch.patch": mtp_fc_unquantized,
    "0003-nvfp4-e2m1-turbo-header.patch": e2m1_builds_for_plain_sm121,
    "0004-qwen3-next-qkvz-prefix.patch": qkvz_prefix_single,
}


def check_intent(patch_name: str, facts: TreeFacts) -> Intent | None:
    """The patch's intent check on ``facts``' tree; None when the patch defines none."""
    check = INTENT.get(patch_name)
    if check is None:
        return None
    try:
        return check(facts)
    except (OSError, SyntaxError, UnicodeDecodeError, TurboError) as exc:
        return Intent(None, f"could not be evaluated ({exc.__class__.__name__}: {exc})")
