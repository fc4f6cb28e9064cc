"""Registry of orchestrations (versioned) and activities, and the typed payload codec.

Payloads are JSON text in storage. Each handler's type hints are recorded: inputs are structured into
the annotated type, outputs unstructured, with one shared cattrs converter — so attrs classes,
dataclasses, enums, datetimes and UUIDs round-trip. Plain JSON values need no hints.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import typing
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import attrs
from cattrs.preconf.json import make_converter

from .errors import PayloadError

__all__ = ["Registry", "converter", "encode_payload", "decode_payload", "PayloadError"]

#: The converter used for every payload. Register extra hooks on it for your own types.
converter = make_converter()
converter.register_unstructure_hook(uuid.UUID, str)
converter.register_structure_hook(uuid.UUID, lambda v, _: v if isinstance(v, uuid.UUID) else uuid.UUID(str(v)))

_VERSION_RE = re.compile(r"^\d+(\.\d+){0,2}$")
#: ``json.dumps(value, separators=(",", ":"), allow_nan=False)`` without building an encoder per call.
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_SCALARS = frozenset({str, int, float, bool, type(None)})
_SMALL_INT = 10**18
_encode_str = json.encoder.encode_basestring_ascii


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is plain JSON already (exact ``str``/``int``/``float``/``bool``/``None``, lists
    and ``str``-keyed dicts of them): the converter would return it unchanged, so it is skipped."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if depth > 16:
        return False
    # Plain loops with the scalar test inlined: this runs for every payload of every turn.
    if kind is list:
        for v in value:
            if type(v) not in _SCALARS and not _plain(v, depth + 1):
                return False
        return True
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str or (type(v) not in _SCALARS and not _plain(v, depth + 1)):
                return False
        return True
    return False


def encode_payload(value: Any, what: str = "value") -> str | None:
    """``value`` as compact JSON text, through :data:`converter` (attrs classes, dataclasses, enums,
    datetimes and UUIDs included).

    Args:
        value: The value to encode.
        what: How to name the value in the error message (``"input of activity 'Charge'"``).

    Returns:
        The JSON text, or ``None`` for ``None``.

    Raises:
        PayloadError: The value cannot become JSON (an unsupported type, NaN, too deeply nested, or a
            converter hook that raised).
    """
    if value is None:
        return None
    kind = type(value)
    if kind is int and -_SMALL_INT < value < _SMALL_INT:  # the same text json.dumps writes, without it
        return int.__repr__(value)
    if kind is str:
        return _encode_str(value)  # what json.dumps does for a str (ensure_ascii)
    try:
        return _dumps(value if _plain(value) else converter.unstructure(value))
    except RecursionError:
        raise PayloadError(f"{what} is nested too deeply to become JSON ({type(value).__name__})") from None
    except Exception as exc:  # TypeError, ValueError (NaN), or a hook of the user's that raised
        raise PayloadError(
            f"{what} is not JSON-serialisable: {type(value).__name__} value {_short(value)} ({exc})"
        ) from exc


def _short(value: Any) -> str:
    try:
        return f"{value!r:.200}"
    except Exception:  # noqa: BLE001 - a __repr__ that raises
        return f"<{type(value).__name__}>"


def decode_payload(text: str | None, hint: Any = None) -> Any:
    """JSON ``text`` as a value of type ``hint`` (plain JSON without one). Raises ``PayloadError``
    naming the text and the type when either step fails."""
    if text is None:
        return None
    try:
        if len(text) < 19 and text.isdigit() and text.isascii() and (text[0] != "0" or len(text) == 1):
            value: Any = int(text)  # a plain non-negative integer, as json.loads reads it
        else:
            value = json.loads(text)
    except RecursionError:
        raise PayloadError(f"JSON text {text[:80]!r}… is nested too deeply to decode") from None
    except ValueError as exc:
        raise PayloadError(f"not valid JSON: {text[:200]!r} ({exc})") from None
    if hint is None or hint is Any or hint is object or value is None:
        return value
    try:
        return converter.structure(value, hint)
    except RecursionError:
        raise PayloadError(f"{text[:80]!r}… is nested too deeply to convert to {_type_name(hint)}") from None
    except Exception as exc:
        raise PayloadError(f"cannot convert {text[:200]!r} to {_type_name(hint)}: {_cattrs_reason(exc)}") from exc


def _type_name(hint: Any) -> str:
    return getattr(hint, "__qualname__", None) or repr(hint)


def _cattrs_reason(exc: BaseException) -> str:
    """cattrs groups the per-field errors: name them (``missing field 'sku'``, ``wrong: unexpected``)."""
    subs = getattr(exc, "exceptions", None)
    if not subs:
        return f"{type(exc).__name__}: {exc}"
    parts = []
    for sub in subs[:5]:
        notes = "; ".join(getattr(sub, "__notes__", []) or [])
        what = f"missing field {sub}" if isinstance(sub, KeyError) else f"{type(sub).__name__}: {sub}"
        parts.append(what + (f" ({notes})" if notes else ""))
    return ", ".join(parts)


def parse_version(version: str) -> tuple[int, int, int]:
    """``"1.2.3"`` as ``(1, 2, 3)``; ``"2"`` and ``"2.1"`` are padded with zeros.

    Raises:
        ValueError: ``version`` is not one to three dot-separated non-negative integers.
    """
    if not isinstance(version, str):
        raise ValueError(f"version must look like '1.0.0', got {version!r}")
    return _parse_version(version)


@functools.lru_cache(maxsize=1024)
def _parse_version(version: str) -> tuple[int, int, int]:
    # Cached: every turn resolves its orchestration's version (a few tenths of a per cent of a run).
    if not _VERSION_RE.match(version):
        raise ValueError(f"version must look like '1.0.0', got {version!r}")
    parts = [int(p) for p in version.split(".")] + [0, 0]
    return parts[0], parts[1], parts[2]


def _hints(fn: Callable[..., Any]) -> tuple[Any, Any]:
    """(input type, output type) from the annotations of ``fn(ctx, input) -> output``."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: treat payloads as plain JSON
        hints = {}
    params = list(inspect.signature(fn).parameters.values())
    input_hint = hints.get(params[1].name) if len(params) > 1 else None
    output_hint = hints.get("return")
    if output_hint is type(None):
        output_hint = None
    return input_hint, output_hint


@attrs.frozen
class OrchestrationHandler:
    """A registered orchestration version: the function and the input/output types from its hints."""

    name: str
    version: str
    fn: Callable[..., Coroutine[Any, Any, Any]]
    input_type: Any
    output_type: Any
    takes_input: bool

    def start(self, ctx: Any, input_text: str | None) -> Coroutine[Any, Any, Any]:
        """The orchestration's coroutine, called with ``ctx`` and the input converted to ``input_type``
        (no input argument if the function takes none).

        Raises:
            PayloadError: ``input_text`` is not JSON or does not convert to ``input_type``.
        """
        if not self.takes_input:
            return self.fn(ctx)
        return self.fn(ctx, decode_payload(input_text, self.input_type))


@attrs.frozen
class ActivityHandler:
    """A registered activity: the function, its input/output types from its hints, whether it is
    ``async def`` and takes an input, and the event loop it asks for (``loop``)."""

    name: str
    fn: Callable[..., Any]
    input_type: Any
    output_type: Any
    is_async: bool
    takes_input: bool
    loop: str | None = None  # "asyncio": run on an asyncio event loop even when the runtime runs on Trio


class Registry:
    """Orchestrations and activities by name. Register with the decorators::

        @registry.activity("Charge")
        async def charge(ctx: dt.ActivityContext, order: Order) -> Receipt: ...

        @registry.orchestration("Checkout", version="1.0.0")
        async def checkout(ctx: dt.OrchestrationContext, order: Order) -> Receipt: ...

    A handler takes its context and at most one input. The input's annotation says what the JSON input
    is converted to, the return annotation what the JSON output is converted back to (no annotation:
    plain JSON). Orchestrations have versions; activities have one implementation per name. Give the
    registry to ``open_runtime`` (and, through ``runtime.client``, to the client).
    """

    def __init__(self) -> None:
        self._activities: dict[str, ActivityHandler] = {}
        self._orchestrations: dict[str, dict[tuple[int, int, int], OrchestrationHandler]] = {}

    # registration ----------------------------------------------------------------------------------
    def activity(
        self, name: str | None = None, *, loop: str | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register an activity: ``@registry.activity("Name")`` (the name defaults to the function's).
        The function takes an ``ActivityContext`` and at most one input; ``async def`` runs on the event
        loop, a plain ``def`` in a worker thread. ``loop="asyncio"`` runs an ``async def`` activity on an
        asyncio event loop (a dedicated loop thread) when the runtime runs on Trio, so asyncio-only
        libraries work in it; under an asyncio runtime it changes nothing.

        Also usable bare: ``@registry.activity``.

        Args:
            name: The activity name (default: the function's ``__name__``).
            loop: ``None`` or ``"asyncio"`` (see above).

        Returns:
            A decorator that registers the function and returns it unchanged.

        Raises:
            ValueError: A bad or duplicate name, or a bad ``loop`` (see :meth:`add_activity`).
            TypeError: The function does not fit (see :meth:`add_activity`).
        """
        if callable(name):  # used as @registry.activity without parentheses
            fn = name
            self.add_activity(fn)
            return fn

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add_activity(fn, name, loop=loop)
            return fn

        return deco

    def orchestration(
        self, name: str | None = None, *, version: str = "1.0.0"
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register an orchestration: ``@registry.orchestration("Name", version="1.0.0")`` (or bare
        ``@registry.orchestration``). The function is an ``async def`` taking an ``OrchestrationContext``
        and at most one input.

        Args:
            name: The orchestration name (default: the function's ``__name__``).
            version: Its version, ``"major.minor.patch"``; several versions of one name may be registered.

        Returns:
            A decorator that registers the function and returns it unchanged.

        Raises:
            ValueError: A bad name or version, or a duplicate version (see :meth:`add_orchestration`).
            TypeError: The function is not ``async def`` or takes no parameter.
        """
        if callable(name):
            fn = name
            self.add_orchestration(fn)
            return fn

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add_orchestration(fn, name, version=version)
            return fn

        return deco

    def add_activity(self, fn: Callable[..., Any], name: str | None = None, *, loop: str | None = None) -> None:
        """Register ``fn`` as activity ``name`` (see :meth:`activity`). Raises ``ValueError`` for a bad or
        duplicate name or an unknown ``loop``, ``TypeError`` for a function without a context parameter.

        Args:
            fn: ``def`` or ``async def`` function taking an ``ActivityContext`` and at most one input.
            name: The activity name (default: ``fn.__name__``).
            loop: ``None`` or ``"asyncio"`` (an ``async def`` only).

        Raises:
            ValueError: An empty, reserved (``__duroxide...``) or already registered name, or a ``loop``
                other than ``None`` / ``"asyncio"``.
            TypeError: ``fn`` is not callable, takes no parameter, or is not ``async def`` with ``loop``.
        """
        name = name or fn.__name__
        if loop not in (None, "asyncio"):
            raise ValueError(f"activity {name!r}: loop must be None or 'asyncio', got {loop!r}")
        if loop is not None and not inspect.iscoroutinefunction(fn):
            raise TypeError(f"activity {name!r}: loop={loop!r} needs an 'async def' function (a plain def "
                            "already runs in a thread of its own)")
        if not isinstance(name, str) or not name:
            raise ValueError(f"activity name must be a non-empty string, got {name!r}")
        if name.startswith("__duroxide"):
            raise ValueError(f"activity name {name!r} is reserved")
        if name in self._activities:
            raise ValueError(f"activity {name!r} is already registered")
        if not callable(fn):
            raise TypeError(f"activity {name!r} must be a function, got {fn!r}")
        params = list(inspect.signature(fn).parameters)
        if not params:
            raise TypeError(f"activity {name!r} must take an ActivityContext as its first parameter")
        input_hint, output_hint = _hints(fn)
        self._activities[name] = ActivityHandler(
            name, fn, input_hint, output_hint, inspect.iscoroutinefunction(fn), len(params) > 1, loop
        )

    def add_orchestration(self, fn: Callable[..., Any], name: str | None = None, *, version: str = "1.0.0") -> None:
        """Register ``fn`` as version ``version`` of orchestration ``name`` (see :meth:`orchestration`).

        Args:
            fn: ``async def`` function taking an ``OrchestrationContext`` and at most one input.
            name: The orchestration name (default: ``fn.__name__``).
            version: ``"major.minor.patch"`` (``"2"`` and ``"2.1"`` are accepted too).

        Raises:
            ValueError: An empty name, a malformed version, or a version already registered for ``name``.
            TypeError: ``fn`` is not an ``async def`` function or takes no parameter.
        """
        name = name or fn.__name__
        if not isinstance(name, str) or not name:
            raise ValueError(f"orchestration name must be a non-empty string, got {name!r}")
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"orchestration {name!r} must be an 'async def' function")
        key = parse_version(version)
        versions = self._orchestrations.setdefault(name, {})
        if key in versions:
            raise ValueError(f"orchestration {name!r} version {version} is already registered")
        params = list(inspect.signature(fn).parameters)
        if not params:
            raise TypeError(f"orchestration {name!r} must take an OrchestrationContext as its first parameter")
        input_hint, output_hint = _hints(fn)
        versions[key] = OrchestrationHandler(name, version, fn, input_hint, output_hint, len(params) > 1)

    def merge(self, other: Registry, prefix: str = "") -> None:
        """Add everything of ``other`` (optionally with a name prefix).

        Args:
            other: The registry to copy from (left unchanged).
            prefix: Put before every name of ``other``.

        Raises:
            ValueError: A name (or orchestration version) is already registered here.
        """
        for act in other._activities.values():
            self.add_activity(act.fn, prefix + act.name, loop=act.loop)
        for versions in other._orchestrations.values():
            for h in versions.values():
                self.add_orchestration(h.fn, prefix + h.name, version=h.version)

    # lookup ----------------------------------------------------------------------------------------
    def get_activity(self, name: str) -> ActivityHandler | None:
        """The activity registered as ``name``, or ``None``.

        Args:
            name: The activity name.

        Returns:
            Its ``ActivityHandler`` (function, types, loop), or ``None`` if not registered.
        """
        return self._activities.get(name)

    def resolve_orchestration(self, name: str, version: str | None = None) -> OrchestrationHandler | None:
        """The exact ``version`` if given (``None`` if not registered), else the latest.

        Args:
            name: The orchestration name.
            version: ``"1.0.0"``; ``None`` for the highest registered version.

        Returns:
            The handler, or ``None`` for an unknown name or version (a malformed version included).
        """
        versions = self._orchestrations.get(name)
        if not versions:
            return None
        if version is None:
            return versions[max(versions)]
        try:
            return versions.get(parse_version(version))
        except ValueError:
            return None

    def has_orchestration(self, name: str) -> bool:
        """True if some version of orchestration ``name`` is registered.

        Args:
            name: The orchestration name.

        Returns:
            Whether :meth:`resolve_orchestration` finds a latest version of it.
        """
        return bool(self._orchestrations.get(name))

    @property
    def orchestration_names(self) -> list[str]:
        """The registered orchestration names, sorted."""
        return sorted(self._orchestrations)

    @property
    def activity_names(self) -> list[str]:
        """The registered activity names, sorted."""
        return sorted(self._activities)

    def versions(self, name: str) -> list[str]:
        """The registered versions of orchestration ``name``, lowest first (empty if unknown).

        Args:
            name: The orchestration name.

        Returns:
            Version strings as registered (``["1.0.0", "2.0.0"]``).
        """
        return [self._orchestrations[name][k].version for k in sorted(self._orchestrations.get(name, {}))]

    # codec used by the engine ----------------------------------------------------------------------
    def encode(self, value: Any, what: str) -> str | None:
        """:func:`encode_payload` (the engine's codec interface); raises ``PayloadError``."""
        return encode_payload(value, what)

    def decode_activity_result(self, name: str, text: str | None) -> Any:
        """The JSON result of activity ``name`` as its return annotation's type (plain JSON if unknown);
        raises ``PayloadError``."""
        act = self._activities.get(name)
        return decode_payload(text, act.output_type if act else None)

    def decode_sub_result(self, name: str, text: str | None) -> Any:
        """The JSON output of orchestration ``name`` as the return type of its latest version (plain JSON
        if unknown); raises ``PayloadError``."""
        h = self.resolve_orchestration(name)
        return decode_payload(text, h.output_type if h else None)

    def decode_event_data(self, name: str, text: str | None) -> Any:
        """The JSON data of event or queue message ``name`` as plain JSON; raises ``PayloadError``."""
        return decode_payload(text)

    def decode_value(self, text: str | None, hint: Any) -> Any:
        """A key-value value (``ctx.get_value``) as type ``hint`` (plain JSON for ``None``); raises
        ``PayloadError``."""
        return decode_payload(text, hint)
