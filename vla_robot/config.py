"""Typed configuration read from ROS 2 parameter YAML files.

The files in ``config/`` use the ROS 2 form, so a ROS install, the in-process runner and the CLI
all read the same files::

    policy_node:
      ros__parameters:
        control_hz: 30.0
        safety:
          max_velocity: [1.0, 1.0]

Each section is read into a dataclass. Nested dataclasses are nested mappings in YAML (ROS turns
them into dotted parameter names, ``safety.max_velocity``). Every problem is a :class:`ConfigError`
that names the file, the key and the form that was expected; unknown keys are errors, not ignored.

A dataclass may define ``validate(self)`` and raise ``ValueError`` for cross-field rules; the
message is reported with the file and section.

This module imports only the standard library and PyYAML, so every part of the stack can use it.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "config_dir",
    "read_parameter_file",
    "read_yaml",
    "from_dict",
    "load_node_config",
    "to_ros_parameters",
    "from_ros_parameters",
    "apply_overrides",
]


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def config_dir() -> Path:
    """The folder holding the shipped parameter files.

    In a source checkout this is ``<repo>/config``; in a colcon install it is
    ``share/vla_robot/config`` (found through ament_index when available).
    """
    env = os.environ.get("VLA_ROBOT_CONFIG_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent / "config"
    if here.is_dir():
        return here
    try:  # pragma: no cover - only on a ROS 2 install
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("vla_robot")) / "config"
    except Exception:  # noqa: BLE001
        return here


def _describe(tp: Any) -> str:
    """A human-readable name for an annotation, used in error messages."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        inner = _describe(args[0]) if args else "value"
        return f"a list of {inner}"
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        text = " or ".join(_describe(a) for a in args)
        return text + (" or null" if len(args) < len(get_args(tp)) else "")
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    def fail(extra: str = "") -> typing.NoReturn:
        raise ConfigError(
            f"{source}: '{key}' is {value!r} ({type(value).__name__}); expected {_describe(tp)}{extra}"
        )

    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail()
        return from_dict(tp, value, source=source, prefix=key + ".")
    if origin is Literal:
        if value not in get_args(tp) or isinstance(value, bool) != any(
            isinstance(a, bool) for a in get_args(tp) if a == value
        ):
            fail()
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key, source)
            except ConfigError as e:  # try the next member
                errors.append(e)
        fail()
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail()
        (inner, *_) = get_args(tp) or (Any,)
        out = [_convert(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if tp is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail()
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    fail()


def from_dict(cls: type[T], data: dict, *, source: str = "<config>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking every key and type.

    ``source`` (a file and section) and ``prefix`` (the dotted path so far) go into error messages.
    Missing keys take the dataclass default; a key without a default must be present.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}'"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + f"; known keys here: {known}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], prefix + name, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: required key '{prefix}{name}' is missing ({_describe(hints[name])})")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"{source}: {prefix}{e}") from None
    return obj


def read_yaml(path: str | os.PathLike, what: str = "file", hint: str = "", error: type[Exception] = ConfigError) -> Any:
    """Parse a YAML file; a missing file or bad YAML raises ``error`` naming the path and ``what`` it is.

    ``hint`` (e.g. where examples are) is appended to the not-found message.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found" + (f" ({hint})" if hint else ""))
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None


def read_parameter_file(path: str | os.PathLike) -> dict[str, dict]:
    """Read a ROS 2 parameter file into ``{node_name: parameters}``.

    Accepts ``node: {ros__parameters: {...}}`` and the wildcard ``/**: {ros__parameters: ...}``.
    """
    path = Path(path)
    doc = read_yaml(path, "parameter file")
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of node names to 'ros__parameters', got {type(doc).__name__}")
    out: dict[str, dict] = {}
    for node, body in doc.items():
        if not isinstance(body, dict) or set(body) != {"ros__parameters"}:
            raise ConfigError(
                f"{path}: section '{node}' must have exactly one key 'ros__parameters' "
                f"(the ROS 2 parameter file form: '{node}:\\n  ros__parameters:\\n    key: value')"
            )
        params = body["ros__parameters"] or {}
        if not isinstance(params, dict):
            raise ConfigError(f"{path}: '{node}.ros__parameters' must be a mapping")
        out[str(node).lstrip("/")] = params
    return out


def load_node_config(
    cls: type[T], path: str | os.PathLike, node_name: str, overrides: dict[str, Any] | None = None
) -> T:
    """Read section ``node_name`` (merged over the ``/**`` wildcard section) of ``path`` into ``cls``.

    ``overrides`` are dotted keys (``safety.max_velocity``) applied on top, as ``--set k=v`` does.
    """
    sections = read_parameter_file(path)
    params: dict = {}
    if "**" in sections:
        params = _deep_merge(params, sections["**"])
    if node_name in sections:
        params = _deep_merge(params, sections[node_name])
    elif "**" not in sections:
        raise ConfigError(f"{path}: no section for node '{node_name}'; sections here: {', '.join(sections) or 'none'}")
    if overrides:
        params = apply_overrides(params, overrides)
    return from_dict(cls, params, source=f"{path} [{node_name}]")


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(params: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys in a nested mapping (``{"safety.max_velocity": [1, 2]}``)."""
    out = _deep_merge({}, params)
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{dotted}': '{p}' is not a mapping")
        node[leaf] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` (value in YAML syntax: ``3``, ``[1, 2]``, ``true``, ``abc``)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (value in YAML syntax)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML: {e}") from None
    return key.strip(), value


def to_ros_parameters(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a config dataclass into dotted ROS parameter names and plain values."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out.update(to_ros_parameters(v, prefix + f.name + "."))
        else:
            out[prefix + f.name] = list(v) if isinstance(v, tuple) else v
    return out


def from_ros_parameters(cls: type[T], flat: dict[str, Any], source: str = "<ros parameters>") -> T:
    """Inverse of :func:`to_ros_parameters`: dotted names back into the (validated) dataclass."""
    return from_dict(cls, apply_overrides({}, flat), source=source)


# --- node configs -------------------------------------------------------------------------------
# node name -> "module:Class" of its config dataclass; imported lazily so this module stays light.
# The classes compose the package configs (vla_robot/<package>/config.py).
NODE_CONFIGS: dict[str, str] = {
    "policy_node": "vla_robot.nodes.config:PolicyNodeConfig",
    "camera_node": "vla_robot.nodes.config:CameraNodeConfig",
    "arm_node": "vla_robot.nodes.config:ArmNodeConfig",
    "teleop_node": "vla_robot.nodes.config:TeleopNodeConfig",
    "episode_manager_node": "vla_robot.nodes.config:EpisodeManagerNodeConfig",
    "twin_node": "vla_robot.nodes.config:TwinNodeConfig",
    "recorder_node": "vla_robot.data.config:RecorderNodeConfig",
    # not a ROS node: the section `vla-robot serve --config FILE` reads
    "policy_server": "vla_robot.serving.config:ServerConfig",
}


def node_config_class(node_name: str) -> type:
    """The config dataclass of ``node_name`` (a name from :data:`NODE_CONFIGS`)."""
    import importlib

    if node_name not in NODE_CONFIGS:
        raise ConfigError(f"no config is known for node '{node_name}'; known nodes: {', '.join(sorted(NODE_CONFIGS))}")
    module, cls = NODE_CONFIGS[node_name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_graph_config(path: str | os.PathLike, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Load every node section of a parameter file into its config dataclass: ``{node: config}``."""
    out = {}
    for node in read_parameter_file(path):
        if node == "**":
            continue
        out[node] = load_node_config(node_config_class(node), path, node, (overrides or {}).get(node))
    return out
