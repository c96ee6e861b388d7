"""Model commands: ``models`` lists the providers, ``ask`` makes one recorded model call."""

from __future__ import annotations

import json
from typing import Any

import click

from habitus._cli._agents import _with_habitat
from habitus._cli._main import _Context, cli
from habitus._habitat import Habitat
from habitus.models import ChatMessage, ModelCall

__all__ = ["ask", "models"]


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON: one provider per line.")
@click.pass_obj
def models(obj: _Context, as_json: bool) -> None:
    """List the model providers the gateway would use, the default first."""

    async def work(hab: Habitat) -> list[dict[str, Any]]:
        gateway = hab.models
        names = [gateway.default] + [n for n in gateway.providers if n != gateway.default]
        rows = []
        for name in names:
            config = gateway.config(name)
            provider = gateway.provider(name)
            rows.append(
                {
                    "name": name,
                    "default": name == gateway.default,
                    "type": type(provider).__name__,
                    "base_url": getattr(provider, "base_url", None) or config.base_url,
                    "chat_model": config.chat_model or getattr(provider, "chat_model", None),
                    "embedding_model": config.embedding_model or getattr(provider, "embedding_model", None),
                    "concurrency": config.concurrency,
                    "embed_batch": config.embed_batch,
                }
            )
        return rows

    for row in _with_habitat(obj, read_only=True, work=work):
        if as_json:
            click.echo(json.dumps(row))
            continue
        mark = "*" if row["default"] else " "
        where = row["base_url"] or "(offline)"
        click.echo(
            f"{mark} {row['name']:<12} {row['type']:<15} {where:<36} chat={row['chat_model'] or '-'} "
            f"embed={row['embedding_model'] or '-'} concurrency={row['concurrency']}"
        )


@cli.command()
@click.argument("prompt")
@click.option("--as", "principal", default="system", show_default=True, metavar="PRINCIPAL", help="Who asks.")
@click.option("--provider", metavar="NAME", help="Which provider (default: the default one; see 'habitus models').")
@click.option("--model", metavar="NAME", help="Which model (default: the provider's chat_model).")
@click.option("--system", "system_prompt", metavar="TEXT", help="A system message sent before the prompt.")
@click.option("--no-stream", is_flag=True, help="Print the answer when it is complete instead of as it comes.")
@click.option("--json", "as_json", is_flag=True, help="Print the call as JSON (answer, tool calls, usage, event).")
@click.pass_obj
def ask(
    obj: _Context,
    prompt: str,
    principal: str,
    provider: str | None,
    model: str | None,
    system_prompt: str | None,
    no_stream: bool,
    as_json: bool,
) -> None:
    """Ask a model PROMPT and print its answer; the call is recorded as a model.called event."""
    messages = [ChatMessage(role="user", content=prompt)]
    if system_prompt:
        messages.insert(0, ChatMessage(role="system", content=system_prompt))
    stream = not (no_stream or as_json)

    def show(piece: str) -> None:
        click.echo(piece, nl=False)

    async def work(hab: Habitat) -> ModelCall:
        return await hab.models.chat(
            principal, messages, provider=provider, model=model, on_text=show if stream else None
        )

    call = _with_habitat(obj, read_only=False, work=work)
    if as_json:
        click.echo(call.model_dump_json())
        return
    if stream:
        click.echo()
    else:
        click.echo(call.text)
    for tool_call in call.tool_calls:
        click.echo(f"[tool call] {tool_call.name}({json.dumps(tool_call.arguments)})")
    usage = call.usage
    click.echo(
        f"({call.provider}/{call.model}: {usage.prompt_tokens}+{usage.completion_tokens} tokens, "
        f"{call.latency_ms:.0f} ms; model.called {call.event})",
        err=True,
    )
