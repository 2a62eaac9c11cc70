"""Which check each task option gets: what ``--port``, ``--src`` or ``--arch`` accept.

One table per task, named as the task's function in tasks.py (as in turbo/data/help.toml); the
checks themselves are ``turbo.options``'. A value given on the command line that fails its check
is one line and exit 2 before the task runs.
"""

from __future__ import annotations

from turbo import options as opt
from turbo.kernel_sources import LAYOUTS, VARIANTS
from turbo.options import Check, OptionError
from turbo.traffic import KV_BYTES


def check_gbs(value: str) -> None:
    """`--bandwidth-gbs`: a positive number of GB/s (the option check of `invoke bench`)."""
    try:
        figure = float(value)
    except ValueError:
        raise OptionError(
            "is not a number of GB/s", "For example --bandwidth-gbs 273 (a GB10)"
        ) from None
    if not 0 < figure < 1e6:
        raise OptionError("is not a bandwidth in GB/s", "Give a positive figure, e.g. 273")


SERVE: dict[str, Check] = {
    "port": opt.PORT,
    "model": opt.dir_target,
    "host": opt.host,
    "set": opt.set_item,
    "head": opt.ip_address,
    "node_ip": opt.ip_address,
    "ifname": opt.netdev,
    "hca": opt.name_list,
    "gid_index": opt.int_range(0, 255),
    "health_timeout": opt.SECONDS,
}
PATCH: dict[str, Check] = {"src": opt.existing_dir, "ref": opt.git_ref}

CHECKS: dict[str, dict[str, Check]] = {
    "build_vllm": {
        "src": opt.existing_dir,
        "ref": opt.git_ref,
        "repo": opt.word,
        "patch_ref": opt.git_ref,
        "target": opt.one_of("cuda", ""),
        "arch_list": opt.arch_list,
        "max_jobs": opt.int_range(1, 4096),
        "nvcc_threads": opt.int_range(1, 64),
        "cutlass_src": opt.existing_dir,
        "flash_attn_src": opt.existing_dir,
        "flashmla_src": opt.existing_dir,
        "qutlass_src": opt.existing_dir,
        "triton_kernels_src": opt.existing_dir,
        "python": opt.executable,
    },
    "wheel": {"dest": opt.dir_target, "python": opt.executable},
    "install_wheel": {
        "wheel": opt.file_or_url,
        "python": opt.executable,
        "target": opt.one_of("cuda", ""),
    },
    "build_stamp": {"compare": opt.existing_file},
    "fetch_model": {"dest": opt.dir_target, "revision": opt.git_ref},
    "serve": SERVE,
    "stop": {"port": opt.PORT, "timeout": opt.int_range(0, 3600)},
    "verify": {
        "url": opt.url,
        "port": opt.PORT,
        "served_name": opt.word,
        "wait": opt.int_range(0, 7 * 24 * 3600),
        "max_tokens": opt.int_range(1),
        "timeout": opt.SECONDS,
    },
    "bench": {
        "url": opt.url,
        "port": opt.PORT,
        "served_name": opt.word,
        "prompt_lens": opt.int_list(1),
        "output_lens": opt.int_list(1),
        "concurrency": opt.int_list(1, 4096),
        "repeats": opt.int_range(1, 1000),
        "tool": opt.one_of("auto", "vllm", "builtin"),
        "model": opt.existing_dir,
        "out": opt.dir_target,
        "timeout": opt.SECONDS,
        "bandwidth_gbs": check_gbs,
        "context": opt.int_range(1, 10**7),
        "kv_dtype": opt.one_of(*KV_BYTES),
    },
    "cluster_detect": {"sysfs": opt.existing_dir, "head": opt.ip_address},
    "cluster_link_check": {"log": opt.existing_file},
    "patches_check": PATCH,
    "patches_apply": PATCH,
    "patches_revert": {"src": opt.existing_dir},
    "patches_refresh": {"src": opt.existing_dir},
    "patches_archs": {"src": opt.existing_dir, "arch_list": opt.arch_list},
    "patches_matrix": {"versions": opt.version_list, "doc": opt.file_target},
    "kernels_probe": {"arch": opt.sm_targets},
    "kernels_bench": {
        "rows": opt.int_range(1),
        "cols": opt.multiple_of(16, 16),
        "iters": opt.int_range(1),
        "repeats": opt.int_range(1),
        "variants": opt.list_of(VARIANTS),
        "dtypes": opt.list_of(("bfloat16", "float16")),
        "layouts": opt.list_of(LAYOUTS),
        "out": opt.file_target,
    },
    "kernels_compile_check": {"archs": opt.sm_targets},
    "service_install": {
        **SERVE,
        "name": opt.unit_name,
        "requires": opt.unit_name,
        "unit_dir": opt.dir_target,
    },
    "service_status": {"unit_dir": opt.existing_dir},
    "service_uninstall": {
        "name": opt.unit_name,
        "profile": opt.unit_name,
        "unit_dir": opt.existing_dir,
    },
    "adopt_vllm": {"vllm": opt.executable},
    "adopt_model": {"dir": opt.existing_dir, "repo": opt.word},
    "demo": {"port": opt.PORT},
}
