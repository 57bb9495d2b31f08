"""The layering the workloads rely on, checked on the real modules: a client, `vre-job` or
`vre-export`, imported in a fresh interpreter, loads no server (no Flask, SQLAlchemy, pydicom,
web3, Granian) and none of its service's server modules; the core `vre` imports no service nor the
launcher; and no two of the platform's modules import each other at import time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.workload_imports import (
    FIRST_PARTY,
    REPO,
    first_party,
    loaded_modules,
    server_libraries,
)

# The pieces of the core a client stands on: the HTTP client base, its logs, tokens from
# outside, the configuration and the service registry; never the web, database or API layers.
CLIENT_CORE = {"vre", "vre.client", "vre.config", "vre.logs", "vre.service_auth", "vre.services"}
LIGHT = {
    "portal.client": {"portal", "portal.client"},
    "dataset_service.client": {"dataset_service", "dataset_service.client"},
    # The pure parts the inclusion-proof check needs: the chain contract (no transport), the
    # Merkle proofs, the trace schema and the log's verifier of indexed entries.
    "tracer.client": {"tracer", "tracer.client", "tracer.chain", "tracer.merkle",
                      "tracer.schema", "tracer.verify"},
}


@pytest.mark.parametrize("client", sorted(LIGHT))
def test_a_client_imports_no_server(client: str) -> None:
    modules = loaded_modules(client)
    assert server_libraries(modules) == set()
    assert first_party(modules) - CLIENT_CORE == LIGHT[client]


# The researchers' commands: (module, a command that calls the portal).
COMMANDS = {"batch_tools.cli": ["flavors"], "batch_tools.export_cli": ["list"]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_commands_help_loads_neither_the_client_nor_the_configuration(command: str) -> None:
    modules = loaded_modules(command, code=(
        "import contextlib, io\n"
        f"from {command} import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"))
    assert first_party(modules) == {"batch_tools", "batch_tools._common", command}
    assert not {m for m in modules if m.split(".")[0] in ("pydantic", "requests", "urllib3")}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_command_loads_only_the_portal_client(command: str) -> None:
    # Port 9 (discard) on loopback: nothing answers, so the command fails at its first call,
    # after everything it needs is imported.
    modules = loaded_modules(command, code=(
        "import contextlib, io\n"
        f"from {command} import main\n"
        "with contextlib.redirect_stderr(io.StringIO()):\n"
        "    assert main(['--portal', 'http://127.0.0.1:9', '--token', 't', "
        f"{COMMANDS[command][0]!r}]) == 3\n"))
    assert server_libraries(modules) == set()
    assert first_party(modules) - CLIENT_CORE == {"batch_tools", "batch_tools._common", command,
                                                  "portal", "portal.client"}


def _imports(path: Path, everywhere: bool) -> set[str]:
    """The first-party modules a file imports: at module level, or anywhere (in functions
    too) when `everywhere`; imports only for type checkers do not count."""
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if everywhere else iter(tree.body)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return {name for name in found if name.split(".")[0] in FIRST_PARTY}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_core_imports_no_service_nor_the_launcher() -> None:
    reaching_up = {
        f"{_module_name(path)} imports {name}"
        for path in sorted((REPO / "vre").rglob("*.py"))
        for name in _imports(path, everywhere=True) if not name.startswith("vre")
    }
    assert reaching_up == set()


def test_no_import_cycle_between_the_platform_modules() -> None:
    files = {_module_name(p): p for top in FIRST_PARTY for p in (REPO / top).rglob("*.py")
             if "migrations" not in p.parts}
    graph = {name: {m for m in _imports(path, everywhere=False) if m in files and m != name}
             for name, path in files.items()}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
