"""Typed settings from plain config values: the one validation at the boundary.

`typed(cls, values, key)` builds the dataclass `cls` (nested dataclasses, tuples, lists, dicts, `X | None`,
`Literal`, `Path` included) from the plain dicts/lists a config file gives, checking every value against
the field's annotation. `check_call(target, kwargs, key)` checks the keyword arguments a `_target_` node
will be called with against the target's signature. Both raise `SettingsError`, whose message is one line
naming the key, the expected type and the value given, e.g.
`data.batching.batch_size: expected int, got 1.5 (float)` or `data.batching.batchsize: unknown key (expected
one of batch_size, bptt, ...)`. The defaults live in the dataclasses / signatures only; nothing here
restates them.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib
import inspect
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """A config value of the wrong type, an unknown or a missing key (one-line message naming the key)."""


def typed(cls: type[T], values: Any, key: str) -> T:
    """The dataclass `cls` built from the mapping `values` (config key `key`), every field checked.

    Raises:
        SettingsError: `values` is not a mapping, has a key `cls` lacks, lacks a required one, a value does
            not match its field's annotation, or `cls.__post_init__` rejects a value (ValueError/TypeError).
    """
    if not isinstance(values, collections.abc.Mapping):
        raise SettingsError(f"{key}: expected a mapping of {cls.__name__} fields, got {_shown(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    _reject_unknown(values, fields, key)
    hints = _hints(cls)
    kwargs = {name: _convert(hints.get(name, Any), value, _join(key, name)) for name, value in values.items()}
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            raise SettingsError(f"{_join(key, name)}: missing (expected {_name(hints.get(name, Any))})")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        if isinstance(error, SettingsError):
            raise
        message = str(error)
        raise SettingsError(message if message.startswith(key) else f"{key}: {message}") from None


def check_call(target: str | Any, kwargs: collections.abc.Mapping[str, Any], key: str) -> None:
    """Check `kwargs` (Hydra's `_`-prefixed keys skipped) against the signature of `target` (a callable or its
    dotted path): unknown names (unless it takes `**kwargs`) and values that match no annotated type.

    Raises:
        SettingsError: as `typed`; also when `target` cannot be imported.
    """
    func = _locate(target, key) if isinstance(target, str) else target
    init = func.__init__ if inspect.isclass(func) else func
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return  # a builtin without a signature: nothing to check against
    params = signature.parameters
    open_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    given = {k: v for k, v in kwargs.items() if not str(k).startswith("_")}
    if not open_kwargs:
        _reject_unknown(given, named, key)
    hints = _hints(inspect.unwrap(init))
    for name, value in given.items():
        if name in hints:
            _convert(hints[name], value, _join(key, name), check_only=True)


# ---------------------------------------------------------------- conversion


def _convert(tp: Any, value: Any, key: str, check_only: bool = False) -> Any:
    """`value` as the annotation `tp` wants it; SettingsError naming `key` when it does not fit."""
    if tp is Any or isinstance(tp, (TypeVar, typing.ForwardRef, str)):
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key, check_only)
            except SettingsError:
                continue
        raise _mismatch(tp, value, key)
    if origin is typing.Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise SettingsError(f"{key}: expected one of {', '.join(repr(a) for a in args)}, got {_shown(value)}")
    if tp is type(None):
        if value is None:
            return None
        raise _mismatch(tp, value, key)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return typed(tp, value, key) if not check_only else _check_mapping(tp, value, key)
    if origin is not None:
        return _convert_generic(tp, origin, args, value, key, check_only)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _mismatch(tp, value, key)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _mismatch(tp, value, key)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value if check_only else float(value)
        raise _mismatch(tp, value, key)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _mismatch(tp, value, key)
    if tp is Path or (inspect.isclass(tp) and issubclass(tp, Path)):
        if isinstance(value, (str, Path)):
            return value if check_only else Path(value)
        raise _mismatch(tp, value, key)
    if inspect.isclass(tp):
        if isinstance(value, tp) or _is_config_node(value) and tp not in (list, dict, tuple):
            return value
        raise _mismatch(tp, value, key)
    return value  # an annotation this checker does not model (a Protocol, a NewType...): accepted as is


def _convert_generic(tp: Any, origin: Any, args: tuple, value: Any, key: str, check_only: bool) -> Any:
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _mismatch(tp, value, key)
        if len(args) == 2 and args[1] is Ellipsis:
            items = [_convert(args[0], v, f"{key}[{i}]", check_only) for i, v in enumerate(value)]
        elif args:
            if len(value) != len(args):
                raise SettingsError(f"{key}: expected {len(args)} values ({_name(tp)}), got {_shown(value)}")
            items = [_convert(a, v, f"{key}[{i}]", check_only) for i, (a, v) in enumerate(zip(args, value))]
        else:
            items = list(value)
        return value if check_only else tuple(items)
    if origin in (list, collections.abc.Sequence, collections.abc.Iterable, collections.abc.MutableSequence):
        if not isinstance(value, (list, tuple)):
            raise _mismatch(tp, value, key)
        item = args[0] if args else Any
        items = [_convert(item, v, f"{key}[{i}]", check_only) for i, v in enumerate(value)]
        return value if check_only else items
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        if not isinstance(value, collections.abc.Mapping):
            raise _mismatch(tp, value, key)
        item = args[1] if len(args) == 2 else Any
        converted = {k: _convert(item, v, _join(key, str(k)), check_only) for k, v in value.items()}
        return value if check_only else converted
    if origin is type or origin is collections.abc.Callable:
        return value
    if inspect.isclass(origin):
        if isinstance(value, origin):
            return value
        raise _mismatch(tp, value, key)
    return value


def _check_mapping(cls: type, value: Any, key: str) -> Any:
    typed(cls, value, key)
    return value


def _is_config_node(value: Any) -> bool:
    """A nested `_target_` node (it is built later, so its type is not known yet)."""
    return isinstance(value, collections.abc.Mapping) and "_target_" in value


# ---------------------------------------------------------------- helpers


def _reject_unknown(values: collections.abc.Mapping, known: collections.abc.Mapping, key: str) -> None:
    unknown = [k for k in values if k not in known]
    if unknown:
        raise SettingsError(f"{_join(key, str(unknown[0]))}: unknown key (expected one of {', '.join(known)})")


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj)
    except Exception:  # annotations naming what this interpreter cannot resolve: check names only
        return {}


def _locate(path: str, key: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError, ValueError):
        pass
    # A nested attribute such as `pkg.module.Class.method`.
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for part in parts[cut:]:
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            break
    raise SettingsError(f"{_join(key, '_target_')}: cannot import {path!r}")


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else _name(a) for a in typing.get_args(tp))
        return (
            f"{getattr(origin, '__name__', str(origin))}[{args}]" if args else getattr(origin, "__name__", str(origin))
        )
    return getattr(tp, "__name__", str(tp))


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _mismatch(tp: Any, value: Any, key: str) -> SettingsError:
    return SettingsError(f"{key}: expected {_name(tp)}, got {_shown(value)}")
