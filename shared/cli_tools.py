"""`goalrail tools` — the tool catalogue by hand: list it, show one tool, call one with validated
input (the same registry, policy and typed errors the executor uses)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from shared.settings import Settings

tools_app = typer.Typer(help="The tool catalogue: list, show and call tools.", no_args_is_help=True)
console = Console()
Tenant = Annotated[Optional[str], typer.Option(help="Only what this tenant may use (the tool policy).")]


def _catalogue(settings: Settings) -> Any:
    from shared.tools.catalogue import build_catalogue

    try:
        return build_catalogue(settings)
    except Exception as exc:  # a bad config or unreachable document: say which, not a traceback
        console.print(f"[red]cannot build the tool catalogue from {settings.tools_config}: {exc}[/]")
        raise typer.Exit(2) from None


def _print_json(value: Any) -> None:
    console.print_json(json.dumps(value, default=str))


@tools_app.command("list")
def tools_list(
    tenant: Tenant = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the specs as JSON.")] = False,
) -> None:
    """Every tool: name, side effect, permission scope, source, description."""
    from shared.tools.policy import ToolPolicy

    settings = Settings()
    specs = _catalogue(settings).catalogue()
    if tenant is not None:
        specs = ToolPolicy.load(settings.tool_policy).allowed(specs, tenant)
    if as_json:
        _print_json([spec.model_dump() for spec in specs])
        return
    table = Table()
    for column in ("tool", "effect", "scope", "source", "timeout"):
        table.add_column(column, no_wrap=True)
    table.add_column("description")
    for spec in specs:
        effect = spec.side_effect + ("" if spec.idempotent else " (not idempotent)")
        table.add_row(spec.name, effect, spec.permission_scope, spec.source, f"{spec.timeout_s:g}s",
                      spec.description.splitlines()[0])
    console.print(table)


@tools_app.command("show")
def tools_show(name: Annotated[str, typer.Argument(help="Tool name, e.g. sales.get_figures.")]) -> None:
    """One tool's full description, with its input and output JSON Schemas."""
    from shared.tools.registry import ToolError

    try:
        spec = _catalogue(Settings()).get(name).spec
    except ToolError as exc:
        _print_json(exc.error.model_dump(mode="json"))
        raise typer.Exit(1) from None
    _print_json(spec.model_dump())


@tools_app.command("call")
def tools_call(
    name: Annotated[str, typer.Argument(help="Tool name.")],
    input_json: Annotated[str, typer.Option("--input", "-i", help="Arguments as a JSON object.")] = "{}",
    tenant: Annotated[str, typer.Option(help="Call as this tenant (checked against the tool policy).")] = "default",
    idempotency_key: Annotated[
        Optional[str], typer.Option(help="Idempotency-Key for writes (default: a new one per call).")
    ] = None,
) -> None:
    """Call one tool: input validated first, the policy checked, the output validated; a failure
    prints its typed error (exit 1)."""
    from shared.tools.catalogue import tool_config
    from shared.tools.policy import ToolPolicy
    from shared.tools.registry import ToolContext, ToolError

    try:
        arguments = json.loads(input_json)
    except ValueError as exc:
        raise typer.BadParameter(f"--input is not JSON: {exc}") from None
    if not isinstance(arguments, dict):
        raise typer.BadParameter("--input must be a JSON object")
    settings = Settings()
    registry = _catalogue(settings)

    async def call() -> Any:
        import httpx

        spec = registry.get(name).spec
        refusal = ToolPolicy.load(settings.tool_policy).check(spec, tenant)
        if refusal is not None:
            raise ToolError(refusal)
        key = idempotency_key or f"cli:{uuid.uuid4().hex}"
        async with httpx.AsyncClient(timeout=settings.tool_timeout_s) as http:
            ctx = ToolContext(idempotency_key=key, call_id=key, http=http, config=tool_config(settings))
            return await registry.call(name, arguments, ctx)

    try:
        output = asyncio.run(call())
    except ToolError as exc:
        _print_json(exc.error.model_dump(mode="json"))
        raise typer.Exit(1) from None
    _print_json(output)


@tools_app.command("export-demo-openapi")
def export_demo_openapi(
    out: Annotated[Path, typer.Option(help="Where to write the document.")] = Path(__file__).parent
    / "config" / "openapi" / "demo_api.json",
) -> None:
    """Write the demo business API's OpenAPI document (the source of the demo tools)."""
    from shared.embedded.demo_api import create_app

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(create_app().openapi(), indent=2) + "\n")
    console.print(f"wrote {out}")
