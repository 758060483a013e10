"""Typed client modules written from a server's OpenRPC document (``fastrpc stubgen``).

The document is what ``rpc.discover`` returns (``fastrpc.discovery``): each method's params and
result as JSON Schema. A generated module holds, for a server, an async client class and a
blocking one over ``fastrpc.Client`` and ``fastrpc.SyncClient``, whose methods carry the params'
and results' types, so that a type checker sees a wrong call before it is made. Object schemas
with properties become ``TypedDict`` classes; the rest map onto builtins, ``Literal``,
``Union``, ``Optional``, ``Tuple`` and ``Any``.
"""

from __future__ import annotations

import keyword
import re
from typing import Any, Dict, List, Mapping, Optional

__all__ = ["TypeNamer", "generate", "python_type"]

_SIMPLE = {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "null": "None"}


class TypeNamer:
    """The ``TypedDict`` classes the object schemas of one module become, by name, in the order made."""

    def __init__(self) -> None:
        self.classes: Dict[str, str] = {}  # name -> its statement, in an order that defines bases first
        self._seen: Dict[str, str] = {}  # a schema's canonical text -> the name given to it

    def name_for(self, schema: Mapping[str, Any], root: Mapping[str, Any], hint: str) -> str:
        key = repr(sorted(schema.items(), key=lambda item: item[0]))
        if key in self._seen:
            return self._seen[key]
        name = base = identifier(str(schema.get("title") or hint), capital=True)
        number = 2
        while name in self._seen.values():
            name, number = f"{base}{number}", number + 1
        self._seen[key] = name  # before the fields: a schema may refer to itself
        required = set(schema.get("required", ()))
        fields = [(field, python_type(sub, root, self, f"{name}_{field}")) for field, sub in schema["properties"].items()]
        needed = [item for item in fields if item[0] in required]
        optional = [item for item in fields if item[0] not in required]
        if needed and optional and all(_plain(field) for field, _ in optional):
            # Required and optional keys: a total base and a class of the rest (Required[] needs 3.11).
            self.classes[f"_{name}Required"] = _functional(f"_{name}Required", needed, total=True)
            self.classes[name] = f"class {name}(_{name}Required, total=False):\n" + "".join(
                f"    {field}: {text}\n" for field, text in optional)
        else:  # keys that are not identifiers make every key optional to the checker
            self.classes[name] = _functional(name, fields, total=not optional)
        return name


def _functional(name: str, fields: List[Any], total: bool) -> str:
    """A ``TypedDict`` in the call form (any key names; the types quoted, so order does not matter)."""
    body = ", ".join(f"{field!r}: {text!r}" for field, text in fields)
    return f"{name} = TypedDict({name!r}, {{{body}}}{'' if total else ', total=False'})"


def _plain(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def identifier(text: str, capital: bool = False) -> str:
    """``text`` made a Python identifier (``math.add`` -> ``math_add``; ``Order`` kept)."""
    name = re.sub(r"\W", "_", text) or "_"
    if capital:
        name = "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Object"
    if name[0].isdigit() or keyword.iskeyword(name):
        name = "_" + name
    return name


def python_type(schema: Any, root: Mapping[str, Any], namer: Optional[TypeNamer] = None, hint: str = "Object") -> str:
    """The annotation for a JSON Schema (``root`` holds its ``$defs``); objects with properties
    become ``TypedDict`` classes of ``namer`` (without one: ``Dict[str, Any]``)."""
    if not isinstance(schema, Mapping) or not schema:
        return "Any"
    if "$ref" in schema:
        ref = str(schema["$ref"])
        target = root.get("$defs", {}).get(ref.rsplit("/", 1)[-1]) if ref.startswith("#/$defs/") else None
        return python_type(target, root, namer, ref.rsplit("/", 1)[-1]) if target is not None else "Any"
    if "const" in schema:
        return f"Literal[{schema['const']!r}]"
    if "enum" in schema:
        values = [value for value in schema["enum"] if value is None or isinstance(value, (str, int, bool))]
        return f"Literal[{', '.join(repr(value) for value in values)}]" if values else "Any"
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            return _union([python_type(option, root, namer, hint) for option in schema[combinator]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union([python_type({**schema, "type": one}, root, namer, hint) for one in kind])
    if kind in _SIMPLE:
        return _SIMPLE[kind]
    if kind == "array":
        if "prefixItems" in schema:
            items = [python_type(item, root, namer, hint) for item in schema["prefixItems"]]
            return f"Tuple[{', '.join(items)}]" if items else "Tuple[()]"
        return f"List[{python_type(schema.get('items'), root, namer, hint)}]"
    if kind == "object":
        if schema.get("properties") and namer is not None:
            return namer.name_for(schema, root, hint)
        extra = schema.get("additionalProperties")
        return f"Dict[str, {python_type(extra, root, namer, hint) if isinstance(extra, Mapping) else 'Any'}]"
    return "Any"


def _union(options: List[str]) -> str:
    unique = list(dict.fromkeys(options))
    if "Any" in unique:
        return "Any"
    others = [option for option in unique if option != "None"]
    if len(others) == 1:
        return f"Optional[{others[0]}]" if len(unique) == 2 else others[0]
    text = f"Union[{', '.join(others)}]"
    return f"Optional[{text}]" if "None" in unique else text


def generate(document: Mapping[str, Any], class_name: str = "Service", source: str = "") -> str:
    """The text of a module with ``{class_name}Client`` (async) and ``{class_name}SyncClient``
    (blocking) for the methods of ``document`` (an OpenRPC document, as ``rpc.discover`` gives)."""
    namer = TypeNamer()
    methods = []
    taken: Dict[str, str] = {}
    for method in document.get("methods", ()):
        name = str(method["name"])
        attribute = identifier(name)
        if attribute.startswith("_") or attribute in taken or attribute in ("close", "client"):
            attribute = f"call_{attribute.lstrip('_')}"
        taken[attribute] = name
        hint = identifier(name, capital=True)
        params = [(identifier(str(p["name"])), str(p["name"]), bool(p.get("required", True)),
                   python_type(p.get("schema"), p.get("schema") or {}, namer, f"{hint}_{p['name']}"))
                  for p in method.get("params", ())]
        result = method.get("result") or {}
        returns = python_type(result.get("schema"), result.get("schema") or {}, namer, f"{hint}Result")
        methods.append((attribute, name, params, returns, str(method.get("summary") or ""),
                        bool(method.get("x-raw-params")), bool(method.get("x-stream"))))
    title = class_name
    lines = [
        f'"""Typed fastrpc clients{f" of {source}" if source else ""}, written by ``fastrpc stubgen``: do not edit."""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Any, AsyncIterator, Dict, Iterator, List, Literal, Optional, Tuple, TypedDict, Union",
        "",
        "import fastrpc",
        "",
        "__all__ = [" + ", ".join(repr(n) for n in (f"{title}Client", f"{title}SyncClient", *namer.classes) if not n.startswith("_")) + "]",
        "",
        "_OMITTED: Any = object()  # a default meaning: not sent",
        "",
    ]
    for statement in namer.classes.values():
        lines += [statement.rstrip("\n"), "", ""]
    for kind, base, awaiting in (("Client", "fastrpc.Client", "await "), ("SyncClient", "fastrpc.SyncClient", "")):
        lines += [
            "",
            f"class {title}{kind}:",
            f'    """The methods of the service, typed, over a ``{base}``."""',
            "",
            f"    def __init__(self, client: {base}) -> None:",
            "        self.client = client",
        ]
        for attribute, name, params, returns, summary, raw, stream in methods:
            arguments = "".join(f", {arg}: {text}" + ("" if required else " = _OMITTED")
                                for arg, _, required, text in params)
            if stream:  # the items, as the client's stream() gives them (an iterator of Any)
                call, ignore, asynchronous = "return self.client.stream", "", False
                returns = f"{'Async' if awaiting else ''}Iterator[{returns}]"
            else:
                call, asynchronous = f"return {awaiting}self.client.call", bool(awaiting)
                ignore = "" if returns == "Any" else "  # type: ignore[no-any-return]"  # call() returns Any
            lines += ["", f"    {'async ' if asynchronous else ''}def {attribute}(self{arguments}) -> {returns}:"]
            if summary:
                lines.append(f"        {summary!r}")
            if raw:  # the params are the one value the handler takes
                if params and not params[0][2]:
                    lines += [f"        if {params[0][0]} is _OMITTED:", f"            {call}({name!r}){ignore}"]
                lines.append(f"        {call}({name!r}{', ' + params[0][0] if params else ''}){ignore}")
                continue
            lines.append("        params: Dict[str, Any] = {"
                         + ", ".join(f"{wire!r}: {arg}" for arg, wire, required, _ in params if required) + "}")
            for arg, wire, required, _ in params:
                if not required:
                    lines += [f"        if {arg} is not _OMITTED:", f"            params[{wire!r}] = {arg}"]
            lines.append(f"        {call}({name!r}, params){ignore}")
    return "\n".join(lines) + "\n"
