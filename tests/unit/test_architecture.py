"""The import contract of the tree, read from the source with ``ast`` (nothing is imported).

(a) ``streams/core`` and ``streams/contract`` are pure: the standard library minus I/O,
    msgspec, and each other (plus ``streams.errors``);
(b) the stages and the ports know no library that talks to the world, and no adapter;
(c) layering: ``streams`` reaches ``bridges`` only through the CLI; ``bridges`` uses only
    the shared parts of ``streams`` (and never loads faust, even indirectly); only the
    composition root wires adapters to stages;
(d) private attributes of other objects are touched only in the adapters and transports,
    where the library hooks live (guarded by tests/unit/test_library_hooks.py);
(e) no function is longer than 80 lines.

Every failure names the file, the line and what broke the rule.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_FUNCTION_LINES = 80

#: Standard-library modules that do I/O, run concurrently or leave the process.
IO_MODULES = frozenset({
    "asyncio", "socket", "ssl", "select", "selectors", "http", "urllib", "ftplib", "smtplib", "imaplib",
    "poplib", "telnetlib", "socketserver", "xmlrpc", "wsgiref", "webbrowser", "mailbox", "subprocess",
    "multiprocessing", "concurrent", "threading", "_thread", "signal", "mmap", "sqlite3", "dbm", "shelve",
    "logging", "ctypes",
})
#: The file system and the environment: the core never needs them.
FILE_MODULES = frozenset({"os", "io", "pathlib", "shutil", "tempfile", "glob", "fileinput", "tomllib", "sys"})
#: The one module of the contract that reads the TOML file and the secrets' environment variables.
CONFIG_LOADER = "streams/contract/config.py"
CONFIG_LOADER_MAY = frozenset({"os", "pathlib", "tomllib"})

WORLD_LIBRARIES = ("faust", "aiokafka", "mode", "httpx", "httpx_aiohttp", "aiohttp", "pika", "websockets")
COMPOSITION_ROOT = frozenset({"streams/app.py", "streams/cli.py", "streams/worker.py"})
#: What bridges/ may use of streams/: the records, errors, the retry loop, the Kafka client, TLS contexts, the
#: API budget's token bucket, logging.
BRIDGE_MAY_USE = ("streams.contract", "streams.errors", "streams.retry", "streams.adapters.kafka", "streams.adapters.tls",
                  "streams.adapters.budget",
                  "streams.ops.logs")
#: Where the library hooks (private attributes of faust, aiokafka, pika objects) may live.
HOOK_FOLDERS = ("streams/adapters/", "bridges/transports/")
#: namedtuple's public API is spelled with a leading underscore.
NAMEDTUPLE_API = frozenset({"_replace", "_asdict", "_fields", "_field_defaults", "_make"})


def files(*folders: str) -> list[Path]:
    found: list[Path] = []
    for folder in folders:
        path = ROOT / folder
        found.extend([path] if path.is_file() else sorted(path.rglob("*.py")))
    return found


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_repo_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@functools.cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imports_in(module: ast.Module, package: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import, lazy ones too; ``from p import m`` gives
    ``p.m`` when that is a module of the repository. ``package``: where relative imports start."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(module):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if is_repo_module(candidate) else base))
    return sorted(set(found))  # `from m import a, b` once


@functools.cache
def imports(path: Path) -> tuple[tuple[int, str], ...]:
    name = module_name(path)
    return tuple(imports_in(tree(path), name if path.name == "__init__.py" else name.rpartition(".")[0]))


def within(module: str, *prefixes: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def top(module: str) -> str:
    return module.partition(".")[0]


def failures(report: list[str]) -> str:
    return "\n" + "\n".join(report)


# -- (a) the pure core and the contract --------------------------------------------------


def test_core_and_contract_import_only_the_standard_library_msgspec_and_each_other():
    stdlib = sys.stdlib_module_names
    report = []
    for path in files("streams/core", "streams/contract"):
        forbidden = IO_MODULES | (FILE_MODULES - (CONFIG_LOADER_MAY if rel(path) == CONFIG_LOADER else frozenset()))
        for line, module in imports(path):
            if within(module, "streams.core", "streams.contract", "streams.errors") or top(module) == "msgspec":
                continue
            if top(module) in stdlib and top(module) not in forbidden:
                continue
            report.append(f"{rel(path)}:{line}: imports {module}")
    assert not report, failures(report)


# -- (b) stages and ports -----------------------------------------------------------------


def test_stages_and_ports_import_no_adapter_and_no_library_that_does_io():
    report = []
    for path in files("streams/stages", "streams/ports.py"):
        for line, module in imports(path):
            if within(module, *WORLD_LIBRARIES, "bridges", "streams.adapters", *(m[:-3].replace("/", ".")
                                                                                    for m in COMPOSITION_ROOT)):
                report.append(f"{rel(path)}:{line}: imports {module}")
    assert not report, failures(report)


# -- (c) layering -------------------------------------------------------------------------


def test_streams_reaches_bridges_only_through_the_cli():
    report = [f"{rel(path)}:{line}: imports {module}"
              for path in files("streams") if rel(path) != "streams/cli.py"
              for line, module in imports(path) if within(module, "bridges")]
    assert not report, failures(report)


def test_bridges_use_only_the_shared_parts_of_streams():
    report = [f"{rel(path)}:{line}: imports {module}"
              for path in files("bridges")
              for line, module in imports(path)
              if within(module, "streams") and not within(module, *BRIDGE_MAY_USE)]
    assert not report, failures(report)


def _path_of(module: str) -> Path:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"


def test_bridges_never_load_faust_or_the_worker_even_indirectly():
    """Following the repository's own imports from every bridge module (packages' ``__init__`` too)."""
    report = []
    for start in files("bridges"):
        seen: dict[str, str] = {module_name(start): ""}  # module -> the chain that reached it
        queue = [start]
        while queue:
            path = queue.pop()
            chain = seen[module_name(path)]
            for line, module in imports(path):
                via = f"{chain} -> {rel(path)}:{line}" if chain else f"{rel(path)}:{line}"
                if within(module, "faust", "mode", "streams.adapters.faust", "streams.stages", "streams.app",
                          "streams.worker"):
                    report.append(f"{rel(start)}: loads {module} via {via}")
                    continue
                parts = module.split(".")
                for i in range(1, len(parts) + 1):
                    name = ".".join(parts[:i])
                    if is_repo_module(name) and name not in seen:
                        seen[name] = via
                        queue.append(_path_of(name))
    assert not report, failures(sorted(set(report)))


def test_only_the_composition_root_wires_adapters_to_stages():
    report = []
    for path in files("streams"):
        name = rel(path)
        if name in COMPOSITION_ROOT or name.startswith(("streams/stages/", "streams/adapters/")):
            continue
        for line, module in imports(path):
            if within(module, "streams.stages"):
                report.append(f"{name}:{line}: imports {module} (only {sorted(COMPOSITION_ROOT)} wire the stages)")
    for path in files("streams/adapters"):
        for line, module in imports(path):
            if within(module, "streams.stages", "streams.app"):
                report.append(f"{rel(path)}:{line}: an adapter imports {module}")
    assert not report, failures(report)


# -- (d) private attributes -----------------------------------------------------------------


def test_private_attributes_of_other_objects_are_touched_only_by_the_adapters_and_transports():
    report = []
    for path in files("streams", "bridges"):
        if rel(path).startswith(HOOK_FOLDERS):
            continue
        for node in ast.walk(tree(path)):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
                continue
            if node.attr in NAMEDTUPLE_API or (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                continue
            report.append(f"{rel(path)}:{node.lineno}: {ast.unparse(node)}")
    assert not report, failures(report)


# -- (e) function length ------------------------------------------------------------------


def test_no_function_is_longer_than_80_lines():
    report = []
    for path in files("streams", "bridges"):
        for node in ast.walk(tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > MAX_FUNCTION_LINES:
                    report.append(f"{rel(path)}:{node.lineno}: {node.name} is {length} lines")
    assert not report, failures(report)


# -- the checks themselves ------------------------------------------------------------------


def test_the_import_reader_sees_lazy_relative_and_from_imports():
    source = ("import os\nfrom . import fold\nfrom .table import Row\nfrom .. import errors\n"
              "def f():\n    import socket\n")
    assert imports_in(ast.parse(source), "streams.core") == \
        [(1, "os"), (2, "streams.core.fold"), (3, "streams.core.table"), (4, "streams.errors"), (6, "socket")]
