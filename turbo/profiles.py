"""Serve profiles: read turbo/data/profiles.toml and merge one profile with every override.

Precedence, lowest first: pins (host, port, served name, model) < [defaults] < the profile <
the seed's environment names (MODEL, PORT, ...) < ``--set key=value`` < ``--port``/``--model``/
``--host``. Extra vLLM arguments (after ``--`` on the command line) are appended last, so vLLM's
own "last flag wins" parsing makes them the strongest of all.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from turbo.errors import TurboError, UsageError
from turbo.pins import Pins

PROFILES_RESOURCE = "profiles.toml"
KINDS = ("serve", "ray-head", "ray-worker")
# What a profile serves on: "cuda" (the Spark; GPU checks, [defaults] apply) or "cpu" (vLLM's
# CPU build: no GPU checks, memory fit on host RAM, and no GPU-only [defaults]).
DEVICES = ("cuda", "cpu")
# Settings that are not vLLM flags but fill "{...}" placeholders or drive the cluster setup.
CLUSTER_SETTINGS = ("head", "node-ip")

ArgValue = str | int | float | bool


@dataclass(frozen=True)
class Profile:
    """One profile with every override applied: what ``serve`` turns into argv and env."""

    name: str
    kind: str
    description: str
    cluster: bool
    model: str
    args: dict[str, ArgValue]
    env: dict[str, str]
    extra: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    device: str = "cuda"

    @property
    def host(self) -> str:
        return str(self.args.get("host", ""))

    @property
    def port(self) -> int:
        return int(self.args.get("port", 0))

    @property
    def served_name(self) -> str:
        return str(self.args.get("served-model-name", ""))


@dataclass(frozen=True)
class Overrides:
    """What the command line and environment may change."""

    port: int | None = None
    model: str | None = None
    host: str | None = None
    sets: Sequence[str] = ()
    extra: Sequence[str] = ()
    head: str | None = None
    node_ip: str | None = None


@dataclass(frozen=True)
class ProfileBook:
    """The parsed data file: shared defaults, raw profiles and tuning sections."""

    defaults_args: dict[str, ArgValue]
    defaults_env: dict[str, str]
    profiles: dict[str, dict[str, Any]]
    env_names: dict[str, str]
    sections: dict[str, dict[str, Any]]
    source: str

    def names(self) -> list[str]:
        return list(self.profiles)

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.sections.get(name, {}))


def profiles_path() -> Path:
    return Path(str(resources.files("turbo.data").joinpath(PROFILES_RESOURCE)))


def _bad_file(path: Path, why: str) -> TurboError:
    return TurboError(f"profiles file {path}", why, "Restore turbo/data/profiles.toml from git.")


def _check_value(path: Path, where: str, key: str, value: object) -> ArgValue:
    if isinstance(value, bool | int | float | str):
        return value
    raise _bad_file(path, f"{where}.{key} must be a string, number or boolean")


def load_book(path: Path | None = None) -> ProfileBook:
    """Parse the profiles file (the packaged one unless ``path`` is given)."""
    p = path or profiles_path()
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise _bad_file(p, f"cannot be read ({exc})") from exc
    defaults = raw.get("defaults", {})
    profiles = raw.get("profiles", {})
    if not isinstance(profiles, dict) or not profiles:
        raise _bad_file(p, "has no [profiles.*] tables")
    for name, prof in profiles.items():
        kind = prof.get("kind")
        if kind not in KINDS:
            raise _bad_file(p, f"profile {name} has kind {kind!r}, not one of {', '.join(KINDS)}")
        for key, value in prof.get("args", {}).items():
            _check_value(p, f"profiles.{name}.args", key, value)
        if prof.get("device", "cuda") not in DEVICES:
            raise _bad_file(
                p,
                f"profile {name} has device {prof.get('device')!r}, not one of "
                f"{', '.join(DEVICES)}",
            )
    d_args = {
        k: _check_value(p, "defaults.args", k, v) for k, v in defaults.get("args", {}).items()
    }
    d_env = {k: str(v) for k, v in defaults.get("env", {}).items()}
    sections = {
        k: v
        for k, v in raw.items()
        if k not in ("defaults", "profiles", "env_names") and isinstance(v, dict)
    }
    return ProfileBook(
        defaults_args=d_args,
        defaults_env=d_env,
        profiles=dict(profiles),
        env_names={k: str(v) for k, v in raw.get("env_names", {}).items()},
        sections=sections,
        source=str(p),
    )


def parse_value(text: str) -> ArgValue:
    """``--set`` values: true/false become flags, numbers stay numbers, the rest is text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _parse_set(item: str) -> tuple[str, str]:
    key, eq, value = item.partition("=")
    key = key.strip().removeprefix("--")
    if not eq or not key:
        raise UsageError(
            f"--set {item!r}",
            "is not key=value",
            "Write it as --set gpu-memory-utilization=0.8 (empty value removes the flag).",
        )
    return key, value


def resolve(
    name: str,
    pins: Pins,
    overrides: Overrides | None = None,
    environ: Mapping[str, str] | None = None,
    book: ProfileBook | None = None,
) -> Profile:
    """The profile ``name`` with pins, defaults, environment names and overrides merged."""
    b = book or load_book()
    ov = overrides or Overrides()
    env_src = os.environ if environ is None else environ
    if name not in b.profiles:
        raise UsageError(
            f"profile {name!r}", "is not defined", f"Choose one of: {', '.join(b.names())}."
        )
    raw = b.profiles[name]
    kind = str(raw["kind"])
    args: dict[str, ArgValue] = {
        "host": pins.serve.host,
        "port": pins.serve.port,
        "served-model-name": pins.serve.served_name,
    }
    # `defaults = false`: a profile (cpu) for which the Spark's [defaults] are wrong.
    inherit = kind == "serve" and raw.get("defaults", True) is not False
    if inherit:
        args.update(b.defaults_args)
    args.update(raw.get("args", {}))
    env = dict(b.defaults_env) if inherit else {}
    env.update({k: str(v) for k, v in raw.get("env", {}).items()})
    model = pins.model.path
    settings: dict[str, str] = {}

    # The seed's environment names: only those that are set, each mapped to one known key.
    for env_name, key in b.env_names.items():
        value = env_src.get(env_name)
        if not value:
            continue
        if key == "model":
            model = value
        elif key in CLUSTER_SETTINGS:
            settings[key] = value
        else:
            args[key] = parse_value(value)

    valid = sorted({*args, "model", *CLUSTER_SETTINGS} | {f"env.{k}" for k in env})
    for item in ov.sets:
        key, value = _parse_set(item)
        if key not in valid:
            raise UsageError(
                f"--set {key}",
                f"is not a setting of profile {name}",
                f"Valid keys: {', '.join(valid)}; pass other vLLM flags after --.",
            )
        if key == "model":
            model = value
        elif key in CLUSTER_SETTINGS:
            settings[key] = value
        elif key.startswith("env."):
            env[key[4:]] = value
        elif value == "":
            del args[key]
        else:
            args[key] = parse_value(value)

    if ov.model:
        model = ov.model
    if ov.port is not None:
        args["port"] = ov.port
    if ov.host:
        args["host"] = ov.host
    if ov.head:
        settings["head"] = ov.head
    if ov.node_ip:
        settings["node-ip"] = ov.node_ip
    _check_port(args.get("port"))
    return Profile(
        name=name,
        kind=kind,
        description=str(raw.get("description", "")),
        cluster=bool(raw.get("cluster", False)),
        model=model,
        args=args,
        env=env,
        extra=list(ov.extra),
        settings=settings,
        device=str(raw.get("device", "cuda")),
    )


def _check_port(value: ArgValue | None) -> None:
    try:
        port = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        port = -1
    if not 0 < port < 65536:
        raise UsageError(
            f"port {value!r}",
            "is not a TCP port number",
            "Pass --port with a number between 1 and 65535.",
        )


def describe(book: ProfileBook | None = None) -> list[tuple[str, str, str]]:
    """(name, kind, description) for every profile, for help text and listings."""
    b = book or load_book()
    return [(n, str(p["kind"]), str(p.get("description", ""))) for n, p in b.profiles.items()]
