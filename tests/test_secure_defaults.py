"""Secure defaults, proven: no path from data to code (pickle, eval, exec, dynamic
imports, shell commands) in the library's source; no password in a repr, an error, a
traceback or a log record of a transport or store that fails to connect; and TLS
settings handed to every client library.

(The broker tests check more of the password and TLS with servers of their own:
``test_transport_brokers.py``, ``test_transport_*.py``, ``test_store_postgres.py``.)
"""

from __future__ import annotations

import ast
import logging
import ssl
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import flowkit

if TYPE_CHECKING:
    from collections.abc import Iterator

SRC = Path(flowkit.__file__).parent

# -- no pickle, eval or exec path ------------------------------------------------------

FORBIDDEN_MODULES = frozenset(
    {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle"}
)
"""Modules that turn bytes into arbitrary objects (or code)."""

FORBIDDEN_BUILTINS = frozenset({"eval", "exec", "compile", "__import__"})
"""Builtins that run, compile or import what a string names."""

UNSAFE_YAML = frozenset({"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load"})
"""``yaml`` loaders that build arbitrary objects (``safe_load`` is fine)."""

SHELL_CALLS = frozenset({"os.system", "os.popen", "os.execl", "os.execlp", "os.execv", "os.execvp"})
"""Calls that run a command line through a shell, or replace the process."""


@dataclass(frozen=True)
class Allowed:
    """One use of a forbidden construct that is allowed, and why."""

    module: str
    """The file, relative to ``src/flowkit``."""
    function: str
    """The function it is in."""
    construct: str
    """What it uses (as :func:`findings` names it)."""
    why: str


ALLOWED = (
    Allowed(
        "_cli/common.py",
        "import_module",
        "importlib.import_module",
        "the documented CLI target loading: `flowkit worker app:bus` (and every command "
        "that takes a module or module:attribute) imports the application module the "
        "person running the command names on their own command line; no message, URL "
        "or stored data reaches it",
    ),
    Allowed(
        "transports/_url.py",
        "broker_class",
        "importlib.import_module",
        "imports a broker transport lazily; the module name comes from the fixed table "
        "BROKERS in the same file (matched by class name), never from a URL or a message",
    ),
)


@dataclass(frozen=True)
class Finding:
    module: str
    function: str
    construct: str
    line: int

    def __str__(self) -> str:
        return f"{self.module}:{self.line} in {self.function}(): {self.construct}"


def _dotted(node: ast.expr) -> str:
    """``a.b.c`` for a chain of names and attributes, else ``""``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


class _Scanner(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.module = module
        self.function = "<module>"
        self.findings: list[Finding] = []
        # Local names bound to what a forbidden construct is reached through:
        # `from importlib import import_module as im` makes `im` mean importlib.import_module.
        self.aliases: dict[str, str] = {}

    def _found(self, construct: str, node: ast.AST) -> None:
        line = getattr(node, "lineno", 0)
        self.findings.append(Finding(self.module, self.function, construct, line))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815 - the visitor's naming

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            root = alias.name.split(".")[0]
            if root in FORBIDDEN_MODULES:
                self._found(f"import {alias.name}", node)
            self.aliases[alias.asname or root] = alias.name if alias.asname else root

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level == 0 and module.split(".")[0] in FORBIDDEN_MODULES:
            self._found(f"from {module} import ...", node)
        for alias in node.names:
            if node.level == 0:
                self.aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
            if module == "builtins" and alias.name in FORBIDDEN_BUILTINS:
                self._found(f"from builtins import {alias.name}", node)

    def visit_Call(self, node: ast.Call) -> None:
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        full = f"{self.aliases[head]}.{rest}" if head in self.aliases and rest else name
        if head in self.aliases and not rest:
            full = self.aliases[head]
        if isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_BUILTINS:
            self._found(node.func.id, node)
        elif full in {f"builtins.{b}" for b in FORBIDDEN_BUILTINS}:
            self._found(full, node)
        if full == "importlib.import_module" or full.startswith("importlib.__import__"):
            self._found("importlib.import_module", node)
        if full.startswith("yaml.") and full.split(".")[-1] in UNSAFE_YAML:
            self._found(full, node)
        if full in SHELL_CALLS:
            self._found(full, node)
        if full.startswith(("subprocess.", "asyncio.create_subprocess_shell")):
            if full == "asyncio.create_subprocess_shell":
                self._found(full, node)
            for keyword in node.keywords:
                shell = keyword.value
                if keyword.arg == "shell" and not (
                    isinstance(shell, ast.Constant) and shell.value is False
                ):
                    self._found(f"{full}(shell=...)", node)
        self.generic_visit(node)


def findings(source: str, module: str) -> list[Finding]:
    """Every use of a forbidden construct in ``source``."""
    scanner = _Scanner(module)
    scanner.visit(ast.parse(source))
    return scanner.findings


def _modules() -> Iterator[tuple[str, str]]:
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC).as_posix(), path.read_text(encoding="utf-8")


def test_the_scan_catches_every_forbidden_construct() -> None:
    bad = """
import pickle
import marshal as m
from shelve import open as shelf
from importlib import import_module as im
import importlib, subprocess, yaml, os
import asyncio

def f(data):
    eval(data)
    exec(data)
    compile(data, "x", "exec")
    __import__(data)
    importlib.import_module(data)
    im(data)
    yaml.load(data)
    yaml.unsafe_load(data)
    subprocess.run(data, shell=True)
    subprocess.Popen(data, shell=flag)
    os.system(data)
    asyncio.create_subprocess_shell(data)
"""
    found = {f.construct for f in findings(bad, "bad.py")}
    assert found == {
        "import pickle",
        "import marshal",
        "from shelve import ...",
        "eval",
        "exec",
        "compile",
        "__import__",
        "importlib.import_module",
        "yaml.load",
        "yaml.unsafe_load",
        "subprocess.run(shell=...)",
        "subprocess.Popen(shell=...)",
        "os.system",
        "asyncio.create_subprocess_shell",
    }
    fine = """
import json, re, subprocess, yaml
def g(data):
    json.loads(data)
    re.compile(data)
    yaml.safe_load(data)
    subprocess.run(["ls"], shell=False)
    subprocess.run(["ls"])
"""
    assert findings(fine, "fine.py") == []


def test_no_pickle_eval_exec_or_dynamic_import_in_the_library() -> None:
    allowed = {(a.module, a.function, a.construct) for a in ALLOWED}
    scanned = 0
    used: set[tuple[str, str, str]] = set()
    unexpected: list[str] = []
    for module, source in _modules():
        scanned += 1
        for finding in findings(source, module):
            key = (finding.module, finding.function, finding.construct)
            if key in allowed:
                used.add(key)
            else:
                unexpected.append(str(finding))
    assert scanned > 100, f"only {scanned} modules under {SRC}"
    assert not unexpected, "forbidden constructs (or add to ALLOWED, saying why):\n" + "\n".join(
        unexpected
    )
    # Every exception is still needed: an entry left over would allow a later use unseen.
    assert used == allowed, f"ALLOWED entries no longer used: {allowed - used}"
