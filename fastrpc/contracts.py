"""Typed contracts: a handler's params checked and converted from its type hints, and its schema.

A handler with annotations gets, at registration, a wrapper generated from its signature (Python source
compiled once with ``exec``) that tests each param with inline ``type(x) is int`` checks and converts
JSON values into the annotated types (dataclasses, tuples, sets, Enums...). Only when that fast test
fails does the precise path walk the params again to list every mismatch, for the -32602 error's
``data``. A handler without annotations (or only ``Any``) is called as it is, at today's cost.

Every hint is walked once, by ``_node``, into a tree of nodes; each node knows how to emit its fast
test, convert precisely with error paths, and describe itself as JSON Schema, so that the checker, the
converter (``decode``) and the schema (``method_schema``) cannot disagree on what a hint means.
docs/protocol.md section 7 documents the error format; docs/design.md "Typed methods" the choices.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import inspect
import re
import sys
import types
import typing
import warnings
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

import orjson

from .absent import ABSENT as _ABSENT
from .errors import InvalidParams
from .refusal import Refusal, refusal

__all__ = ["Contract", "DecodeError", "MAX_ERRORS", "contract", "decode", "encode_default", "method_schema", "type_schema"]

#: The most mismatches one error lists in its ``data`` (walking stops there: a bad call costs no more than a good one).
MAX_ERRORS = 20

_MISSING: Any = type("Missing", (), {"__repr__": lambda self: "<missing>"})()
_Never: type = type("Never", (), {})  # the kind no value has: the core's checker has kept no refusal yet
_UnionType = getattr(types, "UnionType", None)  # X | Y, Python 3.10+
_INT_KEY = re.compile(r"-?(0|[1-9][0-9]*)\Z")


class DecodeError(ValueError):
    """A value does not match the type ``decode`` was asked for; ``errors`` lists each mismatch."""

    def __init__(self, errors: List[str], truncated: bool = False) -> None:
        super().__init__(_summary(errors, truncated))
        self.errors = errors


class _Bad(Exception):
    """The fast path's signal that a value does not fit: the precise path then says why."""


class _Full(Exception):
    """Raised by ``_Errors.add`` past MAX_ERRORS: the walk stops."""


class _Errors(list):  # type: ignore[type-arg]
    """Mismatches found by the precise path, as "path: problem" strings, at most MAX_ERRORS."""

    def add(self, path: str, problem: str) -> None:
        if len(self) >= MAX_ERRORS:
            raise _Full
        self.append(f"{path}: {problem}")


def _summary(errors: List[str], truncated: bool) -> str:
    if truncated:
        return f"{errors[0]} (and more than {len(errors) - 1} more)"
    return errors[0] if len(errors) == 1 else f"{errors[0]} (and {len(errors) - 1} more)"


def _got(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _key_path(path: str, key: Any) -> str:
    if type(key) is str and key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{orjson.dumps(key).decode() if type(key) is str else repr(key)}]"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- code generation -------------------------------------------------------------------------------

class _Emitter:
    """Lines of one generated function and the namespace its names live in."""

    def __init__(self) -> None:
        self.lines: List[str] = []
        self.ns: Dict[str, Any] = {"__fr_Bad": _Bad, "__fr_M": _MISSING}
        self.depth = 1
        self._count = 0

    def var(self) -> str:
        self._count += 1
        return f"__fr_{self._count}"

    def const(self, obj: Any) -> str:
        name = self.var()
        self.ns[name] = obj
        return name

    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    def block(self, head: str) -> "_Indent":
        self.line(head)
        return _Indent(self)

    def compile(self, head: str, name: str) -> Any:
        source = head + "\n" + "\n".join(self.lines) + "\n"
        exec(compile(source, f"<fastrpc contract {name}>", "exec"), self.ns)
        func = self.ns[name]
        func.__fastrpc_source__ = source  # for whoever debugs a contract
        return func


class _Indent:
    def __init__(self, em: _Emitter) -> None:
        self.em = em

    def __enter__(self) -> None:
        self.em.depth += 1

    def __exit__(self, *exc: Any) -> None:
        self.em.depth -= 1


# -- the nodes: one per hint, each with its fast test, precise conversion and schema ------------------

class _Node:
    """What a hint means. ``exact``: accepted values come back unchanged; ``kinds``: the types of
    decoded JSON values it may accept (empty: any); ``primary``: those it takes without conversion."""

    expected = "any"
    exact = True
    by_kind = False  # whether a value's mismatches, if any, follow from its type alone
    kinds: Tuple[type, ...] = ()
    primary: Tuple[type, ...] = ()

    def test(self, v: str, em: _Emitter) -> Optional[str]:
        """An expression true when ``v`` fits as it is, or None when statements are needed."""
        return None

    def emit(self, src: str, em: _Emitter) -> str:
        """Statements that raise _Bad unless ``src`` fits; returns the name of the converted value."""
        em.line(f"if not ({self.test(src, em)}): raise __fr_Bad")
        return src

    def convert(self, value: Any, path: str, errors: _Errors) -> Any:
        """``value`` converted, or _MISSING with each mismatch added to ``errors`` under ``path``."""
        raise NotImplementedError

    def schema(self, ctx: "_SchemaContext") -> Dict[str, Any]:
        raise NotImplementedError

    def mismatch(self, value: Any, path: str, errors: _Errors) -> Any:
        errors.add(path, f"expected {self.expected}, got {_got(value)}")
        return _MISSING

    def fast(self, value: Any) -> Any:
        """The compiled converter (made on first use): ``value`` converted, or _Bad."""
        em = _Emitter()
        result = self.emit("v", em)
        em.line(f"return {result}")
        fast = em.compile("def __fr_fast(v):", "__fr_fast")
        self.fast = fast  # type: ignore[method-assign]
        return fast(value)


class _AnyNode(_Node):
    by_kind = True

    def test(self, v: str, em: _Emitter) -> str:
        return "True"

    def emit(self, src: str, em: _Emitter) -> str:
        return src

    def convert(self, value: Any, path: str, errors: _Errors) -> Any:
        return value

    def schema(self, ctx: "_SchemaContext") -> Dict[str, Any]:
        return {}


class _ScalarNode(_Node):
    """int, str, bool, None: the exact type (a bool is no int, an int no bool)."""

    by_kind = True

    def __init__(self, tp: type, expected: str, schema: Dict[str, Any]) -> None:
        self.tp = tp
        self.expected = expected
        self.kinds = self.primary = (tp,)
        self._schema = schema

    def test(self, v: str, em: _Emitter) -> str:
        return f"{v} is None" if self.tp is type(None) else f"type({v}) is {self.tp.__name__}"

    def convert(self, value: Any, path: str, errors: _Errors) -> Any:
        return value if type(value) is self.tp else self.mismatch(value, path, errors)

    def schema(self, ctx: "_SchemaContext") -> Dict[str, Any]:
        return dict(self._schema)


class _FloatNode(_Node):
    """float, which takes an int too (JSON has one kind of number) and makes it a float."""

    expected = "float"
    exact = False
    kinds = (float, int)
    primary = (float,)

    def emit(self, src: str, em: _Emitter) -> str:
        # Converted in place: ``src`` is always a name of the generated code's own, changed only on success.
        with em.block(f"if type({src}) is not float:"):
            em.line(f"if type({src}) is not int: raise __fr_Bad")
            em.line(f"{src} = float({src})")
        return src

    def convert(self, value: Any, path: str, errors: _Errors) -> Any:
        if type(value) is float:
            return value
        if type(value) is int:
            return float(value)
        return self.mismatch(value, path, errors)

    def schema(self, ctx: "_SchemaContext") -> Dict[str, Any]:
        return {"type": "number"}


class _ChoiceNode(_Node):
    """Literal values, or an Enum's members by value: a value is told by its type and value both."""

    def __init__(self, choices: List[Tuple[Any, Any]], title: Optional[str] = None) -> None:
        self._map = {(type(raw), raw): value for raw, value in choices}
        self._raws = [raw for raw, _ in choices]
        self.kinds = self.primary = tuple({type(raw): None for raw in self._raws})
        self.exact = all(raw is value for raw, value in choices)
        listed = " | ".join(_short(raw) for raw in self._raws[:10]) + (" | ..." if len(self._raws) > 10 else "")
        self.expected = f"{title} ({listed})" if title else listed
        self._title = title

    def test(self, v: str, em: _Emitter) -> Optional[str]:
        if not self.exact:
            return None
        return f"(type({v}) in {em.const(set(self.kinds))} and (type({v}), {v}) in {em.const(self._map)})"

    def emit(self, src: str, em: _Emitter) -> str:
        if self.exact:
            return super().emit(src, em)
        out = em.var()
        em.line(f"{out} = {em.const(self._map)}.get((type({src}), {src}), __fr_M) "
                f"if type({src}) in {em.const(set(self.kinds))} else __fr_M")
        em.line(f"if {out} is __fr_M: raise __fr_Bad")
        return out

    def convert(self, value: Any, path: str, errors: _Errors) -> Any:
        if type(value) in self.kinds:
            found = self._map.get((type(value), value), _MISSING)
            if found is not _MISSING:
                return found
            errors.add(path, f"expected {self.expected}, got {_short(value)}")
            return _MISSING
        return self.mismatch(value, path, errors)

    def schema(self, ctx: "_SchemaContext") -> Dict[str, Any]:
        schema: Dict[str, Any] = {"enum": list(self._raws)}
        if self._title:
            schema["title"] = self._title
        return schema


class _UnionNode(_Node):
    """Optional and unions: a value that fits one alternative as it is wins; then the converting ones, in order."""

    def __init__(self, alternatives: List[_Node]) -> None:
        self.alternatives = alternatives
        self.expected = " | ".join(alt.expected for alt in alternatives)
        self.exact = all(alt.exact for alt in alternatives)
        self.kinds = () if any(not alt.kinds for alt in alternatives) else tuple(
            {kind: None for alt in alternatives for kind in alt.kinds})

    def test(self, v: str, em: _Emitter) -> Optional[str]:
        tests = [alt.test(v, em) for alt in self.alternatives]
        if not self.exact or None in tests:
            return None
        return " or ".join(f"({test})" for test in tests)

    def emit(self, src: str, em: _Emitter) -> str:
        out = em.var()
        keyword = "if"
        converting = []
        for alt in self.alternatives:
            test = alt.test(src, em) if alt.exact else None
            if test is None:
                converting.append(alt)
                continue
            with em.block(f"{keyword} {test}:"):
                em.line(f"{out} = {src}")
            keyword = "elif"
        if keyword == "elif":
            em.line("else:")
            em.depth += 1
        opened = 0
        for i, alt in enumerate(converting):
            last = i == len(converting) - 1
            if not last:
                em.line("try:")
                em.depth += 1
            em.line(f"{out} = {alt.emit(src, em)}")
            if not last:
                em.depth -= 1
                em.line("except __fr_Bad:")
                em.depth += 1
                opened += 1
        if not converting:
            em.line("raise __fr_Bad")
        em.depth -= opened + (keyword == "elif")
        return out

    def convert(self, value: Any, path: str, errors: _Errors) -> Any:
        kind = type(value)
        candidates = [alt for alt in self.alternatives if kind in alt.primary]
        candidates += [alt for alt in self.alternatives if alt not in candidates and (not alt.kinds or kind in alt.kinds)]
        for alt in candidates:
            scratch = _Errors()
            try:
                converted = alt.convert(value, path, scratch)
            except _Full:
                continue
            if not scratch:
                return converted
        if len(candidates) == 1:  # only one could have meant it: its own errors say most
            return candidates[0].convert(value, path, errors)
        return self.mismatch(value, path, errors)

    def schema(self, ctx: "_SchemaContext") -> Dict[str, Any]:
        return {"anyOf": [alt.schema(ctx) for alt in self.alternatives]}


class _SequenceNode(_Node):
    """list[X], tuple[X, ...], set[X], frozenset[X]: from a JSON array."""

    kinds = primary = (list,)

    def __init__(self, item: _Node, kind: type, expected: str) -> None:
        self.item = item
        self.kind = kind
        self.expected = expected
        self.exact = kind is list and item.exact

    def emit(self, src: str, em: _Emitter) -> str:
        em.line(f"if type({src}) is not list: raise __fr_Bad")
        element = em.var()
        if self.item.exact:
            if not isinstance(self.item, _AnyNode):
                with em.block(f"for {element} in {src}:"):
                    self.item.emit(element, em)
            items = src
        else:
            items = em.var()
            append = em.var()
            em.line(f"{items} = []")
            em.line(f"{append} = {items}.append")
            with em.block(f"for {element} in {src}:"):
                em.line(f"{append}({self.item.emit(element, em)})")
        if self.kind is list:
            return items
        out = em.var()
        with em.block("try:"):
            em.line(f"{out} = {em.const(self.kind)}({items})")
        with em.block("except TypeError:"):  # unhashable items in a set
            em.line("raise __fr_Bad")
        return out

    def convert(self, value: Any, path: str, errors: _Errors) -> Any:
        if type(value) is not list:
            return self.mismatch(value, path, errors)
        before = len(errors)
        items = [self.item.convert(element, f"{path}[{i}]", errors) for i, element in enumerate(value)]
        if len(errors) > before:
            return _MISSING
        try:
            return items if self.kind is list else self.kind(items)
        except TypeError:
            errors.add(path, f"expected {self.expected}, got list of unhashable items")
            return _MISSING

    def schema(self, ctx: "_SchemaContext") -> Dict[str, Any]:
        schema: Dict[str, Any] = {"type": "array"}
        item = self.item.schema(ctx)
        if item:
            schema["items"] = item
        if self.kind in (set, frozenset):
            schema["uniqueItems"] = True
        return schema


class _TupleNode(_Node):
    """tuple[X, Y]: a JSON array of exactly those items."""

    kinds = primary = (list,)
    exact = False

    def __init__(self, items: List[_Node]) -> None:
        self.items = items
        self.expected = f"tuple[{', '.join(item.expected for item in items)}]" if items else "tuple[()]"

    def emit(self, src: str, em: _Emitter) -> str:
        em.line(f"if type({src}) is not list or len({src}) != {len(self.items)}: raise __fr_Bad")
        names = []
        for i, item in enumerate(self.items):
            element = em.var()
            em.line(f"{element} = {src}[{i}]")
            names.append(item.emit(element, em))
        out = em.var()
        em.line(f"{out} = ({''.join(name + ', ' for name in names)})")
        return out

    def convert(self, value: Any, path: str, errors: _Errors) -> Any:
        if type(value) is not list:
            return self.mismatch(value, path, errors)
        if len(value) != len(self.items):
            errors.add(path, f"expected {self.expected}, got list of {len(value)}")
            return _MISSING
        before = len(errors)
        items = tuple(item.convert(element, f"{path}[{i}]", errors) for i, (item, element) in enumerate(zip(self.items, value)))
        return _MISSING if len(errors) > before else items

    def schema(self, ctx: "_SchemaContext") -> Dict[str, Any]:
        n = len(self.items)
        return {"type": "array", "prefixItems": [item.schema(ctx) for item in self.items], "items": False,
                "minItems": n, "maxItems": n}


class _DictNode(_Node):
    """dict[K, V] from a JSON object; K is str, or int (from decimal keys), an Enum or Literal of strings."""

    kinds = primary = (dict,)

    def __init__(self, key: _Node, value: _Node) -> None:
        self.key = key
        self.value = value
        self.expected = f"dict[{key.expected}, {value.expected}]"
        self._int_keys = isinstance(key, _ScalarNode) and key.tp is int
        self._plain_keys = isinstance(key, _AnyNode) or (isinstance(key, _ScalarNode) and key.tp is str)
        self.exact = self._plain_keys and value.exact

    def _key(self, key: Any) -> Any:
        if type(key) is str and _INT_KEY.match(key):
            return int(key)
        if type(key) is int:
            return key
        raise _Bad

    def emit(self, src: str, em: _Emitter) -> str:
        em.line(f"if type({src}) is not dict: raise __fr_Bad")
        key, element = em.var(), em.var()
        if self.exact:
            if not isinstance(self.value, _AnyNode):
                with em.block(f"for {element} in {src}.values():"):
                    self.value.emit(element, em)
            return src
        out = em.var()
        em.line(f"{out} = {{}}")
        with em.block(f"for {key}, {element} in {src}.items():"):
            if self._int_keys:
                converted_key = em.var()
                em.line(f"{converted_key} = {em.const(self._key)}({key})")
            else:
                converted_key = self.key.emit(key, em)
            em.line(f"{out}[{converted_key}] = {self.value.emit(element, em)}")
        return out

    def convert(self, value: Any, path: str, errors: _Errors) -> Any:
        if type(value) is not dict:
            return self.mismatch(value, path, errors)
        before = len(errors)
        out = {}
        for key, element in value.items():
            where = _key_path(path, key)
            if self._int_keys:
                try:
                    converted_key = self._key(key)
                except _Bad:
                    errors.add(where, f"key expected int, got {_short(key)}")
                    continue
            else:
                key_errors = _Errors()
                converted_key = self.key.convert(key, where, key_errors)
                if key_errors:
                    errors.add(where, f"key expected {self.key.expected}, got {_short(key)}")
                    continue
            out[converted_key] = self.value.convert(element, where, errors)
        return _MISSING if len(errors) > before else out

    def schema(self, ctx: "_SchemaContext") -> Dict[str, Any]:
        schema: Dict[str, Any] = {"type": "object"}
        value = self.value.schema(ctx)
        if value:
            schema["additionalProperties"] = value
        if self._int_keys:
            schema["propertyNames"] = {"pattern": "^-?(0|[1-9][0-9]*)$"}
        elif not self._plain_keys:
            schema["propertyNames"] = self.key.schema(ctx)
        return schema


@dataclasses.dataclass
class _Field:
    name: str
    node: _Node
    required: bool
    default: Any = _MISSING  # a constant default
    factory: Any = None  # a default_factory
    keyword: bool = False  # passed by keyword (a kw_only dataclass field)


def _decoded_key(name: str) -> str:
    """``name`` as orjson's own key object: orjson keeps one str per short key and hands it out for every
    object it decodes, so a look-up with that very object is found by address, where an equal str is
    compared byte for byte (3,700 instructions a 20-field record). Should orjson drop it, equal still works."""
    return next(iter(orjson.loads(orjson.dumps({name: None}))))  # type: ignore[no-any-return]


class _ObjectNode(_Node):
    """A JSON object with named fields: a dataclass or a TypedDict. Its converter is a function of its own
    (recursive types call it by the node), compiled when first emitted; unknown keys are mismatches."""

    kinds = primary = (dict,)
    exact = False

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.expected = cls.__name__
        self.fields: List[_Field] = []  # filled after the node is memoised: a field may name the class itself
        self._compiling = False

    def build(self, values: Dict[str, Any]) -> Any:
        raise NotImplementedError

    def _result(self, em: _Emitter, names: Dict[str, str], changed: List[_Field]) -> str:
        """Code making the value from ``v``, whose fields are ``names`` now: those ``changed`` (converted,
        or optional) differ from (or are absent in) ``v``; the others are ``v``'s own."""
        raise NotImplementedError

    def _copy(self, em: _Emitter, names: Dict[str, str], changed: List[_Field]) -> str:
        """A copy of ``v`` with the changed fields set: the dict copy is a clone of ``v``'s table, at a third
        of the cost of a dict display of every field (``v`` has exactly the known keys, counted above)."""
        out = em.var()
        em.line(f"{out} = v.copy()")
        for field in changed:
            if isinstance(self, _TypedDictNode) and not field.required:
                em.line(f"if {names[field.name]} is not __fr_M: {out}[{field.name!r}] = {names[field.name]}")
            else:
                em.line(f"{out}[{field.name!r}] = {names[field.name]}")
        return out

    def emit(self, src: str, em: _Emitter) -> str:
        if "fast" not in self.__dict__ and not self._compiling:
            self._compile()
        out = em.var()
        # The converter itself, or, inside its own making (a type that contains itself), looked up at each call.
        converter = f"{em.const(self)}.fast" if self._compiling else em.const(self.fast)
        em.line(f"{out} = {converter}({src})")
        return out

    def fast(self, value: Any) -> Any:
        self._compile()  # replaces this method on the instance
        return self.fast(value)

    def _compile(self) -> None:
        """The converter: required fields read by subscript (a missing one is a KeyError), their plain type
        tests joined in one condition, the converting ones after; the key count rules out unknown keys."""
        self._compiling = True
        try:
            em = _Emitter()
            required = [field for field in self.fields if field.required]
            optional = [field for field in self.fields if not field.required]
            em.line(f"if type(v) is not dict{'' if optional else f' or len(v) != {len(required)}'}: raise __fr_Bad")
            raws = {field.name: em.var() for field in self.fields}
            if required:
                with em.block("try:"):
                    for field in required:
                        em.line(f"{raws[field.name]} = v[{em.const(_decoded_key(field.name))}]")
                with em.block("except KeyError:"):
                    em.line("raise __fr_Bad from None")
            names: Dict[str, str] = {}
            if optional:
                count = em.var()
                em.line(f"{count} = {len(required)}")
                for field in optional:
                    raw = raws[field.name]
                    em.line(f"{raw} = v.get({field.name!r}, __fr_M)")
                    with em.block(f"if {raw} is not __fr_M:"):
                        em.line(f"{count} += 1")
                em.line(f"if len(v) != {count}: raise __fr_Bad")
            tests = []
            for field in required:
                test = field.node.test(raws[field.name], em) if field.node.exact else None
                if test is not None:
                    names[field.name] = raws[field.name]
                    if test != "True":
                        tests.append(f"({test})")
            if tests:
                em.line(f"if not ({' and '.join(tests)}): raise __fr_Bad")
            for field in required:
                if field.name not in names:
                    names[field.name] = field.node.emit(raws[field.name], em)
            for field in optional:
                out = names[field.name] = em.var()
                with em.block(f"if {raws[field.name]} is __fr_M:"):
                    if isinstance(self, _TypedDictNode):
                        em.line(f"{out} = __fr_M")
                    elif field.factory is not None:
                        em.line(f"{out} = {em.const(field.factory)}()")
                    else:
                        em.line(f"{out} = {em.const(field.default)}")
                with em.block("else:"):
                    em.line(f"{out} = {field.node.emit(raws[field.name], em)}")
            em.line(f"return {self._result(em, names, [f for f in self.fields if not (f.required and f.node.exact)])}")
            self.fast = em.compile("def __fr_fast(v):", "__fr_fast")  # type: ignore[method-assign]
        finally:
            self._compiling = False

    def convert(self, value: Any, path: str, errors: _Errors) -> Any:
        if type(value) is not dict:
            return self.mismatch(value, path, errors)
        before = len(errors)
        values = {}
        for field in self.fields:
            raw = value.get(field.name, _MISSING)
            if raw is _MISSING:
                if field.required:
                    errors.add(_key_path(path, field.name), "missing")
                continue
            values[field.name] = field.node.convert(raw, _key_path(path, field.name), errors)
        known = {field.name for field in self.fields}
        for key in value:
            if key not in known:
                errors.add(_key_path(path, key), "unexpected")
        if len(errors) > before:
            return _MISSING
        try:
            return self.build(values)
        except Exception as exc:  # a __post_init__ refusing the values
            errors.add(path, f"invalid {self.expected}: {exc}")
            return _MISSING

    def schema(self, ctx: "_SchemaContext") -> Dict[str, Any]:
        return ctx.named(self, lambda: {
            "type": "object", "title": self.expected,
            "properties": {field.name: field.node.schema(ctx) for field in self.fields},
            "required": [field.name for field in self.fields if field.required],
            "additionalProperties": False,
        })


class _DataclassNode(_ObjectNode):
    def build(self, values: Dict[str, Any]) -> Any:
        return self.cls(**values)

    def _plain(self) -> bool:
        """Whether an instance may be made without calling ``__init__``: the dataclass's own ``__init__``
        (made by exec, so its code names no file), only fields it sets, no ``__post_init__``, a ``__dict__``."""
        cls = self.cls
        code = getattr(cls.__dict__.get("__init__"), "__code__", None)
        return (code is not None and code.co_filename == "<string>" and not hasattr(cls, "__post_init__")
                and "__slots__" not in cls.__dict__ and all(f.init for f in dataclasses.fields(cls))
                and len(dataclasses.fields(cls)) == len(self.fields))

    def _result(self, em: _Emitter, names: Dict[str, str], changed: List[_Field]) -> str:
        out = em.var()
        if self._plain():  # what its __init__ would do, at half the cost: the fields set as one dict
            em.line(f"{out} = {em.const(object.__new__)}({em.const(self.cls)})")
            fields = self._copy(em, names, changed)
            if self.cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
                em.line(f"{em.const(object.__setattr__)}({out}, '__dict__', {fields})")
            else:
                em.line(f"{out}.__dict__ = {fields}")
            return out
        args = [names[f.name] for f in self.fields if not f.keyword]
        args += [f"{f.name}={names[f.name]}" for f in self.fields if f.keyword]
        with em.block("try:"):  # a __post_init__ may refuse the values: the precise path says how
            em.line(f"{out} = {em.const(self.cls)}({', '.join(args)})")
        with em.block("except Exception:"):
            em.line("raise __fr_Bad")
        return out


class _TypedDictNode(_ObjectNode):
    def build(self, values: Dict[str, Any]) -> Any:
        return values

    def _result(self, em: _Emitter, names: Dict[str, str], changed: List[_Field]) -> str:
        return self._copy(em, names, changed)


class _LibraryNode(_Node):
    """A pydantic v2 model or a msgspec Struct: the library checks and converts, and describes it."""

    kinds = primary = (dict,)
    exact = False

    def __init__(self, cls: type, library: str) -> None:
        self.cls = cls
        self.library = library
        self.expected = cls.__name__
        if library == "pydantic":
            self._convert: Callable[[Any], Any] = cls.model_validate  # type: ignore[attr-defined]
            self._error: Any = sys.modules["pydantic"].ValidationError
        else:
            msgspec = sys.modules["msgspec"]
            self._convert = lambda value: msgspec.convert(value, cls)
            self._error = msgspec.ValidationError

    def emit(self, src: str, em: _Emitter) -> str:
        out = em.var()
        em.line(f"{out} = {em.const(self)}.fast({src})")
        return out

    def fast(self, value: Any) -> Any:
        try:
            return self._convert(value)
        except self._error:
            raise _Bad from None

    def convert(self, value: Any, path: str, errors: _Errors) -> Any:
        try:
            return self._convert(value)
        except self._error as exc:
            if self.library == "pydantic":
                for error in exc.errors():
                    where = path
                    for part in error["loc"]:
                        where = f"{where}[{part}]" if type(part) is int else _key_path(where, part)
                    errors.add(where, error["msg"])
            else:  # msgspec stops at the first: "Expected `int`, got `str` - at `$.x`"
                message, _, at = str(exc).partition(" - at `$")
                message = message.replace("`", "")
                errors.add(path + at.rstrip("`"), message[:1].lower() + message[1:])
            return _MISSING

    def schema(self, ctx: "_SchemaContext") -> Dict[str, Any]:
        if self.library == "pydantic":
            schema = self.cls.model_json_schema()  # type: ignore[attr-defined]
        else:
            schema = sys.modules["msgspec"].json.schema(self.cls)
        ctx.defs.update(schema.pop("$defs", {}))
        return schema  # type: ignore[no-any-return]


# -- the type walk: the one place a hint is told apart ----------------------------------------------

_ANY = _AnyNode()
_NODES: Dict[Any, _Node] = {
    int: _ScalarNode(int, "int", {"type": "integer"}),
    str: _ScalarNode(str, "str", {"type": "string"}),
    bool: _ScalarNode(bool, "bool", {"type": "boolean"}),
    type(None): _ScalarNode(type(None), "None", {"type": "null"}),
    float: _FloatNode(),
}
_NODES[None] = _NODES[type(None)]
_SEQUENCES = {list: list, collections.abc.Sequence: list, collections.abc.MutableSequence: list,
              set: set, collections.abc.Set: frozenset, collections.abc.MutableSet: set, frozenset: frozenset}
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _library_of(tp: Any) -> Optional[str]:
    """Which optional library a class comes from, looked up only where that library is imported already."""
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return "pydantic"
    msgspec = sys.modules.get("msgspec")
    if msgspec is not None and isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return "msgspec"
    return None


def _node(tp: Any) -> _Node:
    """The node of hint ``tp``, memoised (the same class is one node, which lets a type refer to itself)."""
    try:
        return _NODES[tp]
    except KeyError:
        pass
    except TypeError:  # an unhashable hint (Annotated with unhashable metadata): walked every time
        return _walk(tp)
    node = _walk(tp)
    _NODES.setdefault(tp, node)
    return _NODES[tp]


def _walk(tp: Any) -> _Node:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object or isinstance(tp, typing.TypeVar) and tp.__bound__ is None:
        return _ANY
    if isinstance(tp, typing.TypeVar):
        return _node(tp.__bound__)
    if origin is typing.Annotated:
        return _node(args[0])
    if getattr(tp, "__supertype__", None) is not None:  # NewType
        return _node(tp.__supertype__)
    if origin is typing.Union or (_UnionType is not None and origin is _UnionType):
        alternatives = [_node(arg) for arg in args]
        return _ANY if any(alt is _ANY for alt in alternatives) else _UnionNode(alternatives)
    if origin is typing.Literal:
        return _ChoiceNode([(arg.value if isinstance(arg, enum.Enum) else arg, arg) for arg in args])
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _ChoiceNode([(member.value, member) for member in tp], tp.__name__)
    if tp in _SEQUENCES or origin in _SEQUENCES:
        kind = _SEQUENCES[origin or tp]
        item = _node(args[0]) if args else _ANY
        return _SequenceNode(item, kind, f"{kind.__name__}[{item.expected}]" if args else kind.__name__)
    if tp is tuple or origin is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item = _node(args[0]) if args else _ANY
            return _SequenceNode(item, tuple, f"tuple[{item.expected}, ...]" if args else "tuple")
        return _TupleNode([] if args == ((),) else [_node(arg) for arg in args])
    if tp in _MAPPINGS or origin in _MAPPINGS:
        return _DictNode(_node(args[0]), _node(args[1])) if args else _DictNode(_ANY, _ANY)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _object(_DataclassNode(tp))
    if isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__required_keys__"):
        return _object(_TypedDictNode(tp))
    library = _library_of(tp)
    if library is not None:
        return _LibraryNode(tp, library)
    return _ANY  # a class fastrpc cannot build from JSON: passed on unchecked, as before


def _object(node: _ObjectNode) -> _ObjectNode:
    """Fill a dataclass's or TypedDict's fields, the node memoised first so that a field may name its class."""
    cls = node.cls
    _NODES[cls] = node
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:  # not kept half made: the handler that met it is left unchecked (Contract)
        del _NODES[cls]
        raise
    if isinstance(node, _DataclassNode):
        for field in dataclasses.fields(cls):
            if not field.init:
                continue
            no_default = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            node.fields.append(_Field(
                field.name, _node(hints.get(field.name, Any)), no_default,
                None if field.default is dataclasses.MISSING else field.default,
                None if field.default_factory is dataclasses.MISSING else field.default_factory,
                bool(getattr(field, "kw_only", False))))
    else:
        required: FrozenSet[str] = getattr(cls, "__required_keys__", frozenset())
        for name, hint in hints.items():
            needed = name in required
            while typing.get_origin(hint) in _REQUIREDNESS:  # Required[X], NotRequired[X]: these say, even where
                needed = typing.get_origin(hint) is _REQUIREDNESS[0]  # the class, its hints strings, could not
                hint = typing.get_args(hint)[0]
            node.fields.append(_Field(name, _node(hint), needed))
    return node


_REQUIREDNESS = tuple(getattr(typing, name) for name in ("Required", "NotRequired") if hasattr(typing, name))


# -- schemas --------------------------------------------------------------------------------------------

class _SchemaContext:
    """One schema being written: named types met again inside themselves go to ``$defs`` (referred to
    as ``#/$defs/Name`` from the schema's own root); the others are written inline."""

    def __init__(self) -> None:
        self.defs: Dict[str, Any] = {}
        self._open: Dict[_Node, bool] = {}  # being written -> referred to from inside itself

    def named(self, node: _ObjectNode, write: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
        ref = {"$ref": f"#/$defs/{node.expected}"}
        if node in self._open or node.expected in self.defs:
            self._open[node] = True
            return ref
        self._open[node] = False
        try:
            schema = write()
        finally:
            recursive = self._open.pop(node)
        if recursive:
            self.defs[node.expected] = schema
            return ref
        return schema


def type_schema(tp: Any) -> Dict[str, Any]:
    """The JSON Schema (draft 2020-12) of hint ``tp``, self-contained: any ``$defs`` are at its root."""
    ctx = _SchemaContext()
    schema = _node(tp).schema(ctx)
    if ctx.defs:
        schema = {**schema, "$defs": ctx.defs}
    return schema


def method_schema(func: Callable[..., Any]) -> Dict[str, Any]:
    """A handler's params and result as OpenRPC 1.x content descriptors, each with its JSON Schema, and
    the first line of its docstring: what ``rpc.discover`` says of a method. Unannotated parts get ``{}``;
    ``*args`` and ``**kwargs`` are left out (OpenRPC names each param)."""
    func = inspect.unwrap(func)
    hints = _hints(func)
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        parameters: List[inspect.Parameter] = []
    else:
        parameters = list(signature.parameters.values())
    params = [
        {"name": p.name, "required": p.default is inspect.Parameter.empty, "schema": type_schema(hints.get(p.name, Any))}
        for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    doc = inspect.getdoc(func) or ""
    result = {"name": "result", "schema": type_schema(hints.get("return", Any))}
    if inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func):  # a stream: the schema of its items
        items = typing.get_args(hints.get("return", Any))
        result = {"name": "item", "schema": type_schema(items[0] if items else Any)}
    return {"params": params, "result": result, "summary": doc.strip().splitlines()[0] if doc.strip() else ""}


# -- decoding and encoding ----------------------------------------------------------------------------

def decode(value: Any, tp: Any, *, path: str = "value") -> Any:
    """``value`` (as JSON decodes) converted into hint ``tp`` by the converters params go through: for a
    client to read a result as a type. Raises DecodeError listing each mismatch under ``path``."""
    node = _node(tp)
    try:
        return node.fast(value)
    except _Bad:
        pass
    errors = _Errors()
    truncated = False
    try:
        converted = node.convert(value, path, errors)
    except _Full:
        truncated = True
    if errors:
        raise DecodeError(list(errors), truncated)
    return converted


def encode_default(obj: Any) -> Any:
    """orjson's ``default=`` for results it does not write itself: pydantic models and msgspec Structs.
    (Sets stay unencodable, as before: JSON has no set, and an order made up here would vary by run.)"""
    library = _library_of(type(obj))
    if library == "pydantic":
        return obj.model_dump(mode="json")
    if library == "msgspec":
        return sys.modules["msgspec"].to_builtins(obj)
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


# -- contracts: what registration builds ---------------------------------------------------------------

def _hints(func: Callable[..., Any]) -> Dict[str, Any]:
    """``func``'s type hints, resolved; {} (with a warning) when they cannot be: the handler is then unchecked."""
    target: Any = func
    if not (inspect.isfunction(func) or inspect.ismethod(func)):
        target = getattr(func, "func", None) or getattr(type(func), "__call__", func)  # a partial, a callable object
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception as exc:  # NameError: a name only known to a type checker; TypeError: not annotatable
        if getattr(target, "__annotations__", None):
            warnings.warn(f"fastrpc: the type hints of {func!r} cannot be resolved ({exc}); its params are not checked",
                          stacklevel=3)
        return {}


class Contract:
    """What registration learns of a handler once: its signature, the node of each param, and ``func``,
    what the server calls: the handler itself when nothing is annotated, else the generated checker.
    For the server core, which writes an error reply without an exception: ``call``, ``func`` but for a
    typed handler a checker that returns a ``Refusal`` where ``func``'s raises InvalidParams, and
    ``refusals``, an untyped handler's refusal of each count of positional params (see ``_by_count``)."""

    def __init__(self, handler: Callable[..., Any], name: Optional[str] = None, check: bool = True) -> None:
        self.handler = handler
        self.name = getattr(handler, "__name__", repr(handler)) if name is None else name
        # A generator streams its result (docs/protocol.md section 12); its call runs in a task, as a coroutine's.
        self.stream = inspect.isasyncgenfunction(handler) or inspect.isgeneratorfunction(handler)
        self.is_async = inspect.iscoroutinefunction(handler) or self.stream
        try:
            self.signature: Optional[inspect.Signature] = inspect.signature(handler)
        except (TypeError, ValueError):  # a builtin without a signature
            self.signature = None
        hints = _hints(handler) if check and self.signature is not None else {}
        self.params = [] if self.signature is None else list(self.signature.parameters.values())
        try:
            self.nodes = [_node(hints.get(p.name, Any)) for p in self.params]
        except Exception as exc:  # a dataclass whose own hints name what cannot be found
            warnings.warn(f"fastrpc: the type hints of {handler!r} cannot be resolved ({exc}); its params are not checked",
                          stacklevel=2)
            self.nodes = [_ANY for _ in self.params]
        # The signature's shape, for bind_error and _precise: (name, node, required, default, keyword-only)
        # of each named param, and the nodes of *args and **kwargs (None when the handler takes none).
        P = inspect.Parameter
        self._plain = [(p.name, node, p.default is P.empty, p.default, p.kind is P.KEYWORD_ONLY)
                       for p, node in zip(self.params, self.nodes) if p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)]
        self._positional = [(p.name, p.default is P.empty, p.kind is P.POSITIONAL_ONLY)
                            for p in self.params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
        self._star = next((node for p, node in zip(self.params, self.nodes) if p.kind is P.VAR_POSITIONAL), None)
        self._stars = next((node for p, node in zip(self.params, self.nodes) if p.kind is P.VAR_KEYWORD), None)
        self._keywords = {p.name for p in self.params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)}
        self.typed = any(node is not _ANY for node in self.nodes)
        # Whether the kinds (types) of the values alone decide a typed checker's refusal.
        self._by_kind = self._star is None and self._stars is None and all(node.by_kind for node in self.nodes)
        self.func: Callable[..., Any]
        self.call: Callable[..., Any]
        self.func, self.call = self._generate() if self.typed else (handler, handler)
        self.refusals = () if self.typed else self._by_count()

    def bind_error(self, params: Any) -> Optional[str]:
        """Why ``params`` do not bind to the handler's signature, or None if they do (or it has none), in
        the words of ``inspect.Signature.bind``, from the shape read at registration (binding with the
        Signature itself cost a bad call 3 us more; reading the signature again, 12 us)."""
        if self.signature is None:
            return None
        if type(params) is dict:
            for name, required, positional_only in self._positional:
                if name in params:
                    if positional_only:
                        return f"{name!r} parameter is positional only, but was passed as a keyword"
                elif required:
                    return f"missing a required argument: {name!r}"
            for name, _, required, _, keyword_only in self._plain:
                if keyword_only and required and name not in params:
                    return f"missing a required argument: {name!r}"
            if self._stars is None:
                for key in params:
                    if key not in self._keywords:
                        return f"got an unexpected keyword argument {key!r}"
            return None
        sent = 0 if params is _ABSENT else len(params) if type(params) is list else 1
        if sent > len(self._positional) and self._star is None:
            return "too many positional arguments"
        for name, _, required, _, keyword_only in self._plain:
            if required and (keyword_only or sent <= 0):
                return f"missing a required argument: {name!r}"
            sent -= not keyword_only
        return None

    def refusal(self, params: Any) -> Optional[InvalidParams]:
        """The -32602 error of a call with ``params`` that raised TypeError: every mismatch for a typed
        handler (whose checker's own signature refused extra params), the signature's complaint for an
        untyped one; None when the params fit (the TypeError came from inside the handler)."""
        if self.typed:
            values: Dict[str, Any] = {}
            more: Tuple[Any, ...] = ()
            extra: Dict[str, Any] = {}
            if type(params) is dict:
                for key, value in params.items():
                    (values if key in self._keywords else extra)[key] = value
            elif params is not _ABSENT:
                sent = params if type(params) is list else [params]
                values = {name: value for (name, _, _), value in zip(self._positional, sent)}
                more = tuple(sent[len(self._positional):])
            try:
                self._precise(tuple(values.get(plain[0], _MISSING) for plain in self._plain), more, extra, call=False)
            except InvalidParams as exc:
                return exc
            return None
        reason = self.bind_error(params)
        return None if reason is None else InvalidParams(self._unbound(reason))

    def _unbound(self, reason: str) -> str:
        return f"invalid params for {self.name!r}: {reason}"

    def _by_count(self) -> Tuple[Optional[Refusal], ...]:
        """The refusal of a call with n positional params (an array of n, one other value, or none) at
        index min(n, len - 1), None where n bind: whether they bind depends on n alone. () when every
        count binds or the signature is unknown: the core then checks nothing."""
        if self.signature is None:
            return ()
        last = len(self._positional) + (self._star is None)  # past the last: too many, or as many as the last
        reasons = [self.bind_error([None] * n) for n in range(last + 1)]
        if not any(reasons):
            return ()
        return tuple(None if reason is None else refusal(self.name, InvalidParams.code, self._unbound(reason))
                     for reason in reasons)

    def _generate(self) -> Tuple[Callable[..., Any], Callable[..., Any]]:
        """The checker: a function of the handler's param names, each defaulting to a marker (a missing
        one then fails its test like a mistyped one); extra params fail to bind it (TypeError), and
        ``refusal`` lists them. Plain type tests are joined in one condition; conversions follow.
        With it, the same code whose failure path returns a Refusal (``_refused``) rather than raising."""
        em = _Emitter()
        if any(p.name.startswith("__fr_") for p in self.params):
            raise ValueError(f"{self.name!r}: parameter names starting with '__fr_' are reserved for fastrpc")
        P = inspect.Parameter
        head: List[str] = []
        for i, p in enumerate(self.params):
            if p.kind is P.KEYWORD_ONLY and not any(q.kind is P.VAR_POSITIONAL for q in self.params) and "*" not in head:
                head.append("*")
            head.append(f"*{p.name}" if p.kind is P.VAR_POSITIONAL else f"**{p.name}" if p.kind is P.VAR_KEYWORD
                        else f"{p.name}=__fr_M")
            if p.kind is P.POSITIONAL_ONLY and (i + 1 == len(self.params) or self.params[i + 1].kind is not P.POSITIONAL_ONLY):
                head.append("/")
        tests: List[str] = []
        converting: List[Tuple[inspect.Parameter, _Node]] = []
        for p, node in zip(self.params, self.nodes):
            test = node.test(p.name, em) if node.exact and p.default is P.empty and p.kind in (
                P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY) else None
            if test is None:
                converting.append((p, node))
            else:  # a plain test also refuses the marker of a missing param, but Any's
                tests.append(f"{p.name} is not __fr_M" if test == "True" else f"({test})")
        names: Dict[str, str] = {}
        plain = [p for p in self.params if p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)]
        values = ", ".join(p.name for p in plain) + ("," if plain else "")
        more = next((p.name for p in self.params if p.kind is P.VAR_POSITIONAL), "()")
        extra = next((p.name for p in self.params if p.kind is P.VAR_KEYWORD), "{}")
        slow = f"return __fr_slow(({values}), {more}, {extra})"  # the one line the two checkers differ by
        if not converting:
            with em.block(f"if {' and '.join(tests)}:"):
                em.line(f"return __fr_h({self._call_args(dict((p.name, p.name) for p in self.params))})")
            em.line(slow)
        else:
            with em.block("try:"):
                if tests:
                    em.line(f"if not ({' and '.join(tests)}): raise __fr_Bad")
                for p, node in converting:
                    if p.kind is P.VAR_POSITIONAL:
                        if node is _ANY:
                            names[p.name] = p.name
                        else:
                            items = em.var()
                            em.line(f"{items} = list({p.name})")
                            names[p.name] = _SequenceNode(node, tuple, "").emit(items, em)
                    elif p.kind is P.VAR_KEYWORD:
                        names[p.name] = p.name if node is _ANY else _DictNode(_ANY, node).emit(p.name, em)
                    elif p.default is P.empty:
                        if not node.kinds:  # a node that tests the kind of value refuses the marker anyway
                            em.line(f"if {p.name} is __fr_M: raise __fr_Bad")
                        names[p.name] = node.emit(p.name, em)
                    else:
                        out = names[p.name] = em.var()
                        with em.block(f"if {p.name} is __fr_M:"):
                            em.line(f"{out} = {em.const(p.default)}")
                        with em.block("else:"):
                            em.line(f"{out} = {node.emit(p.name, em)}")
            with em.block("except __fr_Bad:"):
                em.line(slow)
            em.line(f"return __fr_h({self._call_args({p.name: names.get(p.name, p.name) for p in self.params})})")
        em.ns["__fr_h"] = self.handler
        em.ns["__fr_slow"] = self._precise
        name = self._func_name()
        lines = em.lines
        checker = em.compile(f"def {name}({', '.join(head)}):", name)
        checker.__wrapped__ = self.handler  # inspect.signature and method_schema see the handler's
        checker.__doc__ = self.handler.__doc__
        checker.__qualname__ = getattr(self.handler, "__qualname__", checker.__name__)
        refused = f"return __fr_refused(({values}), {more}, {extra})"
        if self._by_kind:  # the last refusal again when the values are of the same kinds (_refused keeps it)
            same = " and ".join(f"type({p.name}) is __fr_k{i}" for i, p in enumerate(plain))
            refused = f"return __fr_last if {same} else {refused[len('return '):]}"
            em.ns.update({f"__fr_k{i}": _Never for i in range(len(plain))}, __fr_last=None)
        em.lines = [line[:-len(slow)] + refused if line.endswith(slow) else line for line in lines]
        em.ns["__fr_refused"] = self._refused
        return checker, em.compile(f"def {name}({', '.join(head)}):", name)

    def _call_args(self, names: Dict[str, str]) -> str:
        P = inspect.Parameter
        return ", ".join(f"*{names[p.name]}" if p.kind is P.VAR_POSITIONAL else f"**{names[p.name]}" if p.kind is P.VAR_KEYWORD
                         else f"{p.name}={names[p.name]}" if p.kind is P.KEYWORD_ONLY else names[p.name] for p in self.params)

    def _func_name(self) -> str:
        name = getattr(self.handler, "__name__", "handler")
        return name if name.isidentifier() and not name.startswith("__fr_") else "handler"

    def _precise(self, values: Tuple[Any, ...], more: Tuple[Any, ...], extra: Dict[str, Any], call: bool = True) -> Any:
        """The params the fast check refused, walked again for every mismatch: raises InvalidParams
        (-32602) listing them; should they all fit after all, the handler is called with them."""
        errors = _Errors()
        args: List[Any] = []
        kwargs: Dict[str, Any] = {}
        truncated = False
        try:
            for (name, node, required, default, keyword_only), value in zip(self._plain, values):
                if value is _MISSING:
                    if required:
                        errors.add(f"params.{name}", "missing")
                    value = default
                else:
                    value = node.convert(value, f"params.{name}", errors)
                if keyword_only:
                    kwargs[name] = value
                else:
                    args.append(value)
            first = len(self._positional)
            for i, value in enumerate(more):
                if self._star is None:
                    errors.add(f"params[{first + i}]", "unexpected")
                else:
                    args.append(self._star.convert(value, f"params[{first + i}]", errors))
            for key, value in extra.items():
                if self._stars is None:
                    errors.add(_key_path("params", key), "unexpected")
                else:
                    kwargs[key] = self._stars.convert(value, _key_path("params", key), errors)
        except _Full:
            truncated = True
        if errors:
            raise InvalidParams(f"invalid params for {self.name!r}: {_summary(errors, truncated)}", list(errors))
        return self.handler(*args, **kwargs) if call else None

    def _refused(self, values: Tuple[Any, ...], more: Tuple[Any, ...], extra: Dict[str, Any]) -> Any:
        """``_precise`` for the core's checker: the Refusal in place of the InvalidParams. Where the kinds
        of the values decide it (``_by_kind``), the checker keeps the last one with their kinds: the
        same mistake made again costs it a test per param, not this walk."""
        try:
            return self._precise(values, more, extra)
        except InvalidParams as exc:
            if exc.code != InvalidParams.code:
                # The handler's own (called once the params fit after all), with a code of its own:
                # answered and counted as any handler's error (its code bounded). A Refusal's code is
                # always -32602, which the server cores count as it is.
                raise
            refused = refusal(self.name, exc.code, exc.message, exc.data)
        if self._by_kind:  # one update: the checker never sees the kinds of one refusal with another
            self.call.__globals__.update({f"__fr_k{i}": type(value) for i, value in enumerate(values)}, __fr_last=refused)
        return refused


def contract(handler: Callable[..., Any], name: Optional[str] = None) -> Contract:
    """The contract of ``handler``, registered as ``name``: see Contract."""
    return Contract(handler, name)

