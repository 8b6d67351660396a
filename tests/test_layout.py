"""The product's import graph stays the product: the worker's modules never import the local
stack (leadpulse.dev) or the benchmark (leadpulse.bench), and the CLI imports the separate
services' and tools' commands only when they are run or listed."""

from __future__ import annotations

import subprocess
import sys

import orjson
from click.testing import CliRunner

TOOLS = ("leadpulse.dev", "leadpulse.bench")


def imported_after(code: str) -> list[str]:
    """The modules a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport sys, orjson\nsys.stdout.buffer.write(orjson.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True, timeout=120)
    modules: list[str] = orjson.loads(done.stdout)
    return modules


def under(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)]


def test_the_worker_imports_nothing_from_dev_or_bench() -> None:
    modules = imported_after("import leadpulse.worker, leadpulse.state, leadpulse.pipeline")
    assert {"leadpulse.worker", "leadpulse.state", "leadpulse.pipeline"} <= set(modules)
    assert under(modules, TOOLS) == []


def test_the_cli_imports_the_tools_and_other_services_only_when_asked() -> None:
    separate = (*TOOLS, "leadpulse.collector", "leadpulse.alerts")
    assert under(imported_after("import leadpulse.cli, leadpulse.worker"), separate) == []
    asked = imported_after("from leadpulse.cli import main\nassert main.get_command(None, 'bench').name == 'bench'")
    assert "leadpulse.bench.cli" in asked


def test_every_command_is_listed_and_runs() -> None:
    from leadpulse.cli import main

    listing = CliRunner().invoke(main, ["--help"], prog_name="leadpulse")
    assert listing.exit_code == 0
    for name in ("worker", "dev", "produce", "score", "top", "rescore", "check-model", "collector", "alerts", "bench",
                 "models", "activate", "rollback", "diff", "backtest"):
        assert f"  {name} " in listing.output, name
        shown = CliRunner().invoke(main, [name, "--help"], prog_name="leadpulse")
        assert shown.exit_code == 0 and f"leadpulse {name}" in shown.output, shown.output
