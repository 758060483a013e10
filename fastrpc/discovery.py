"""What a server offers, as an OpenRPC document (https://spec.open-rpc.org).

The built-in ``rpc.discover`` answers with it (``Server(discovery=False)`` turns that off);
``fastrpc describe`` prints it readably and ``fastrpc stubgen`` writes typed clients from it.
Each method's params and result are JSON Schema taken from its handler's type hints
(``fastrpc.contracts.method_schema``); an unannotated one says ``{}`` (anything).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping

from . import __version__
from .stubgen import TypeNamer, python_type

__all__ = ["OPENRPC_VERSION", "document", "format_document"]

OPENRPC_VERSION = "1.3.2"


def document(methods: Mapping[str, Any], title: str = "fastrpc service") -> Dict[str, Any]:
    """The OpenRPC document of a registry (``Server.methods``): its application methods and
    ``ping``, by name; the other built-ins (``rpc.*``) are the protocol's, not the service's."""
    from .contracts import method_schema
    from .server import BUILTIN_PREFIX

    described: List[Dict[str, Any]] = []
    for name in sorted(methods):
        if name.startswith(BUILTIN_PREFIX):
            continue
        method = methods[name]
        schema = method_schema(method.func)
        entry: Dict[str, Any] = {"name": name, "params": schema["params"], "result": schema["result"],
                                 "paramStructure": "either"}
        if schema["summary"]:
            entry["summary"] = schema["summary"]
        if method.raw_params:
            # The handler takes the params as one value (None when there are none): a client sends
            # that value as the params, or nothing.
            value = schema["params"][0]["schema"] if schema["params"] else {}
            entry["params"] = [{"name": "params", "required": False, "schema": value}]
            entry["x-raw-params"] = True
        if method.stream:  # its result is the schema of each item it streams (docs/protocol.md section 12)
            entry["x-stream"] = True
        described.append(entry)
    return {"openrpc": OPENRPC_VERSION, "info": {"title": title, "version": __version__}, "methods": described}


def format_document(doc: Mapping[str, Any]) -> str:
    """``doc``'s methods as Python-like signatures, a line each with its summary, then the object
    types they name (``fastrpc describe``)."""
    namer = TypeNamer()
    lines = []
    for method in doc.get("methods", ()):
        hint = str(method["name"]).replace(".", "_")
        params = ", ".join(_param(p, namer, hint) for p in method.get("params", ()))
        result = method.get("result") or {}
        returns = python_type(result.get("schema"), result.get("schema") or {}, namer, f"{hint}_result")
        if method.get("x-stream"):
            returns = f"stream of {returns}"
        summary = method.get("summary")
        lines.append(f"{method['name']}({params}) -> {returns}" + (f"\n    {summary}" if summary else ""))
    if namer.classes:
        lines += ["", "types:"] + [f"  {text.rstrip()}".replace("\n", "\n  ") for text in namer.classes.values()]
    return "\n".join(lines)


def _param(param: Mapping[str, Any], namer: TypeNamer, hint: str) -> str:
    name = str(param["name"])
    text = python_type(param.get("schema"), param.get("schema") or {}, namer, hint + "_" + name)
    return f"{name}: {text}" + ("" if param.get("required", True) else " = ...")
