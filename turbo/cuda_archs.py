"""Which CUDA archs each vLLM kernel family gets, computed by vLLM's own CMake code.

vLLM's CMakeLists.txt decides per kernel family with ``cuda_archs_loose_intersection(VAR
"<family list>" "${CUDA_ARCHS}")`` (cmake/utils.cmake), inside ``if()`` blocks on the CUDA
version. A full configure needs torch and a GPU toolchain; this module needs only ``cmake``:
it cuts from the tree's CMakeLists.txt the commands that decide archs (the ``if``/``else``
structure, ``foreach`` loops, ``set``/``list`` on ``*ARCHS``/``*ARCH_FLAGS`` variables, and
calls to the tree's own arch helpers) and runs them with ``cmake -P`` after including the
tree's own cmake/utils.cmake. The CUDA flags are what torch passes for
``TORCH_CUDA_ARCH_LIST`` (``-gencode arch=compute_121a,code=sm_121a`` for 12.1a).

The helpers are found in each tree's utils.cmake rather than listed here, because releases
rename them (0.28 replaced ``clear_cuda_arches`` with ``clear_cuda_gencode_flags`` and added
``warn_if_ptx_arch_requested``); a helper counts when its name speaks of archs or gencode
flags and it does not touch source properties (``set_gencode_flags_for_srcs``) or the HIP
path (``override_gpu_arches``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from turbo.errors import TurboError

_KEEP = {
    "if", "elseif", "else", "endif", "foreach", "endforeach", "break", "continue",
    "cuda_archs_loose_intersection", "clear_cuda_arches", "extract_unique_cuda_archs_ascending",
}  # fmt: skip
# Helpers of utils.cmake that must not run in script mode or do not decide CUDA archs.
_HELPER_SKIP = ("_for_srcs", "override_gpu_arches")
# Set before the cut-out runs so the CUDA branches are the ones taken.
_PRELUDE = """\
cmake_minimum_required(VERSION 3.21)
set(VLLM_TARGET_DEVICE "cuda")
set(VLLM_GPU_LANG "CUDA")
set(CUDA_FOUND ON)
set(HIP_FOUND OFF)
"""
_KNOWN = {
    "VLLM_TARGET_DEVICE",
    "VLLM_GPU_LANG",
    "CUDA_FOUND",
    "HIP_FOUND",
    "CUDA_VERSION",
    "CMAKE_CUDA_COMPILER_VERSION",
}
_CONDITION_WORDS = {
    "NOT",
    "AND",
    "OR",
    "DEFINED",
    "STREQUAL",
    "EQUAL",
    "LESS",
    "GREATER",
    "VERSION_EQUAL",
    "VERSION_LESS",
    "VERSION_GREATER",
    "VERSION_LESS_EQUAL",
    "VERSION_GREATER_EQUAL",
    "GREATER_EQUAL",
    "LESS_EQUAL",
    "IN_LIST",
    "TRUE",
    "FALSE",
    "ON",
    "OFF",
}


def _condition(args: str, loop_vars: frozenset[str] = frozenset()) -> str:
    """The condition as written when it only tests what decides archs; else FALSE.

    Conditions on anything else (torch version warnings, code generators, source paths) guard
    no arch decision; they are made false so their bodies (left out anyway) cannot matter.
    Loop variables of kept ``foreach`` loops over arch lists count as arch values.
    """
    unquoted = re.sub(r'"[^"]*"', "", args)
    for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", unquoted):
        if (
            word in _CONDITION_WORDS
            or word in _KNOWN
            or word in loop_vars
            or word.endswith(("ARCHS", "ARCH_FLAGS"))
        ):
            continue
        return "FALSE"
    return args


def arch_helpers(utils: Path) -> frozenset[str]:
    """The functions and macros of a tree's utils.cmake that compute arch lists."""
    names = set()
    for name, args, _line in _commands(utils.read_text(encoding="utf-8")):
        if name.lower() not in {"function", "macro"} or not args.split():
            continue
        fn = args.split()[0]
        low = fn.lower()
        if ("arch" in low or "gencode" in low) and not any(s in low for s in _HELPER_SKIP):
            names.add(low)
    return frozenset(names)


@dataclass(frozen=True)
class FamilyArchs:
    line: int  # line of the cuda_archs_loose_intersection call in CMakeLists.txt
    var: str
    requested: str  # the family's list in CMakeLists.txt
    archs: tuple[str, ...]  # what it resolved to ('' entries dropped)

    def gencode(self) -> tuple[str, ...]:
        """The -gencode targets set_gencode_flags_for_srcs derives (sm_XY and PTX compute_XY)."""
        out: list[str] = []
        for a in self.archs:
            base = a.replace("+PTX", "").replace(".", "")
            out.append(f"sm_{base}")
            if a.endswith("+PTX"):
                out.append(f"compute_{base}(PTX)")
        return tuple(out)


@dataclass(frozen=True)
class ArchReport:
    arch_list: str
    cuda_version: str
    cuda_archs: tuple[str, ...]
    families: tuple[FamilyArchs, ...]


def torch_gencode_flags(arch_list: str) -> str:
    """The -gencode flags torch adds for TORCH_CUDA_ARCH_LIST (``12.1a`` -> compute_121a)."""
    flags = []
    for item in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        if not item:
            continue
        ptx = item.endswith("+PTX")
        num = item.removesuffix("+PTX").replace(".", "")
        flags.append(f"-gencode arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode arch=compute_{num},code=compute_{num}")
    return " ".join(flags)


def _commands(text: str) -> list[tuple[str, str, int]]:
    """(name, argument text, line) for every command invocation in a CMake file."""
    out = []
    i, n, line = 0, len(text), 1
    ident = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif (m := ident.match(text, i)) and (i == 0 or not text[i - 1].isalnum()):
            j = m.end()
            while j < n and text[j] in " \t":
                j += 1
            if j < n and text[j] == "(":
                start_line, depth, k, in_q = line, 0, j, False
                while k < n:
                    ch = text[k]
                    if ch == "\n":
                        line += 1
                    if in_q:
                        if ch == "\\":
                            k += 1
                        elif ch == '"':
                            in_q = False
                    elif ch == '"':
                        in_q = True
                    elif ch == "#":
                        while k < n and text[k] != "\n":
                            k += 1
                        continue
                    elif ch == "(":
                        depth += 1
                    elif ch == ")":
                        depth -= 1
                        if depth == 0:
                            break
                    k += 1
                out.append((m.group(0), text[j + 1 : k], start_line))
                i = k + 1
            else:
                i = j
        else:
            i += 1
    return out


_LIST_OPS = {
    "APPEND", "PREPEND", "INSERT", "REMOVE_ITEM", "REMOVE_AT", "REMOVE_DUPLICATES", "SORT",
    "FILTER", "TRANSFORM", "POP_BACK", "POP_FRONT", "REVERSE",
}  # fmt: skip


def _is_arch_var(args: str) -> bool:
    words = args.split()
    if not words:
        return False
    first = words[1] if words[0] in _LIST_OPS and (len(words) > 1) else words[0]
    return first.endswith(("ARCHS", "ARCH_FLAGS"))


def _reports_family(command: str, var: str) -> bool:
    """A kernel family's list is decided here: an intersection, or another helper (for
    example ``cuda_archs_sm90plus``) whose first argument is an ``*_ARCHS`` output."""
    if command == "cuda_archs_loose_intersection":
        return True
    return (
        command not in _KEEP
        and command not in {"set", "list"}
        and var.endswith("_ARCHS")
        and var != "CUDA_ARCHS"
    )


def build_script(cmakelists: Path, utils: Path, arch_list: str, cuda_version: str) -> str:
    """The ``cmake -P`` script: prelude, the tree's utils.cmake, and the arch-deciding cut."""
    text = cmakelists.read_text(encoding="utf-8")
    flags = torch_gencode_flags(arch_list)
    keep = _KEEP | arch_helpers(utils)
    cmds = _commands(text)
    loop_vars = frozenset(
        args.split()[0] for name, args, _ in cmds if name.lower() == "foreach" and args.split()
    )
    lines = [
        _PRELUDE,
        f'set(CMAKE_CUDA_COMPILER_VERSION "{cuda_version}")',
        f'set(CUDA_VERSION "{cuda_version}")',
        f'set(CMAKE_CUDA_FLAGS "{flags}")',
        f'include("{utils.as_posix()}")',
    ]
    for name, args, line in cmds:
        low = name.lower()
        if low in {"if", "elseif"}:
            lines.append(f"{name}({_condition(args, loop_vars)})")
        elif low in keep or (low in {"set", "list"} and _is_arch_var(args)):
            lines.append(f"{name}({args})")
            var = args.split()[0] if args.split() else ""
            if _reports_family(low, var):
                lines.append(f'message(STATUS "TURBO|{line}|{var}|${{{var}}}")')
            if low == "extract_unique_cuda_archs_ascending" or (
                low == "cuda_archs_loose_intersection" and var == "CUDA_ARCHS"
            ):
                lines.append(f'message(STATUS "TURBO|{line}|CUDA_ARCHS|${{CUDA_ARCHS}}")')
    return "\n".join(lines) + "\n"


def resolve(src: Path, arch_list: str, cuda_version: str = "13.0.88") -> ArchReport:
    """Evaluate the tree's arch decisions for ``arch_list`` with cmake -P."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise TurboError(
            "evaluating vLLM's arch lists",
            "cmake is not on PATH",
            "Install cmake (it is in the pixi environment).",
        )
    cml, utils = src / "CMakeLists.txt", src / "cmake" / "utils.cmake"
    if not cml.is_file() or not utils.is_file():
        raise TurboError(
            f"vLLM tree {src}",
            "has no CMakeLists.txt or cmake/utils.cmake",
            "Pass --src with a vLLM source tree.",
        )
    requested = {
        line: (args.split('"')[1] if '"' in args else "")
        if name == "cuda_archs_loose_intersection"
        else f"{name}()"
        for name, args, line in _commands(cml.read_text(encoding="utf-8"))
    }
    with tempfile.TemporaryDirectory(prefix="turbo-archs-") as tmp:
        script = Path(tmp) / "archs.cmake"
        script.write_text(build_script(cml, utils, arch_list, cuda_version), encoding="utf-8")
        proc = subprocess.run(
            [cmake, "-P", str(script)], capture_output=True, text=True, check=False
        )
    if proc.returncode != 0:
        raise TurboError(
            "cmake -P over vLLM's arch logic",
            proc.stderr.strip()[-400:],
            "The tree's CMakeLists.txt may be from an unsupported vLLM version.",
        )
    cuda_archs: tuple[str, ...] = ()
    fams = []
    for raw in (proc.stdout + proc.stderr).splitlines():
        if "TURBO|" not in raw:
            continue
        line, var, value = raw.split("TURBO|", 1)[1].split("|", 2)
        archs = tuple(a for a in value.strip().split(";") if a)
        if var == "CUDA_ARCHS":
            cuda_archs = archs
        else:
            fams.append(FamilyArchs(int(line), var, requested.get(int(line), ""), archs))
    return ArchReport(arch_list, cuda_version, cuda_archs, tuple(fams))


def table_rows(report: ArchReport) -> list[tuple[str, str, str, str]]:
    """Rows (family, its list, resolved archs, gencode targets) for console.render_table."""
    rows = [
        (
            "CUDA_ARCHS (all other kernels)",
            "",
            ";".join(report.cuda_archs) or "-",
            " ".join(f"sm_{a.replace('.', '')}" for a in report.cuda_archs) or "-",
        )
    ]
    for f in report.families:
        rows.append(
            (
                f"{f.var} (line {f.line})",
                f.requested,
                ";".join(f.archs) or "-",
                " ".join(f.gencode()) or "-",
            )
        )
    return rows
