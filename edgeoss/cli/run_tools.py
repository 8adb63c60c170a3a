"""`edgeoss run --tools`: a conversation in which gpt-oss calls the app's functions (edgeoss.runtimes.chat)."""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import asdict
from pathlib import Path

from ..errors import UsageError
from ._common import err, out, print_json

TOOL_TIMEOUT_S = 60


def tool_runner(command: str):
    """call_tool for chat(): CMD gets {"name", "arguments"} on stdin; its stdout is the result."""
    argv = shlex.split(command)
    if not argv:
        raise UsageError("--tool-command is empty")

    def call(tool_call) -> str:
        request = json.dumps({"name": tool_call.name, "arguments": tool_call.arguments})
        try:
            done = subprocess.run(argv, input=request, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
        except FileNotFoundError:
            raise UsageError(f"--tool-command {command}: {argv[0]}: no such program") from None
        except subprocess.TimeoutExpired:
            raise UsageError(f"--tool-command {command}: no answer to {tool_call.recipient} within "
                             f"{TOOL_TIMEOUT_S} s") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [""])[-1]
            raise UsageError(f"--tool-command {command}: exited {done.returncode} on {tool_call.recipient}"
                             + (f": {last}" if last else ""))
        return done.stdout.strip()

    return call


def run_with_tools(artifact: Path, engine: str, options: dict, prompt: str, system: str | None, reasoning: str,
                   max_new_tokens: int, sampling: tuple[float, float, int], tools_path: Path,
                   tool_command: str | None, max_rounds: int, forced: tuple[str, ...], as_json: bool) -> None:
    from ..formats.harmony import Turn
    from ..formats.tokenizer import encode, get_encoding
    from ..formats.tools import load_tools
    from ..runtimes.chat import chat
    from ..runtimes.engine import load_engine
    from ..runtimes.generate import Sampling
    from .run import _Stream

    tools = load_tools(tools_path)
    call_tool = tool_runner(tool_command) if tool_command else None
    temperature, top_p, seed = sampling
    streams: list[_Stream] = []

    def on_round(parser) -> None:
        if streams:
            streams[-1].finish()
        if not as_json:
            streams.append(_Stream(parser, get_encoding()))

    def on_token(token: int) -> None:
        if streams and not as_json:
            streams[-1].token(token, parsed=True)

    def on_call(call, result) -> None:
        if as_json:
            return
        out.print(f"\n→ call {call.recipient} {json.dumps(call.arguments)}", style="cyan", highlight=False)
        out.print(f"← {result}" if result is not None else "← (not answered: no --tool-command)", style="green",
                  highlight=False, markup=False)

    err.print(f"loading {artifact} in the {engine} engine ...", highlight=False, soft_wrap=True)
    model = load_engine(engine, artifact, **options)
    try:
        err.print(f"{len(tools)} tools declared ({', '.join(t.name for t in tools)}); reasoning {reasoning}",
                  highlight=False)
        result = chat(model, [Turn("user", prompt)], tools, reasoning=reasoning, developer=system,
                      sampling=Sampling(temperature=temperature, top_p=top_p, seed=seed),
                      max_new_tokens=max_new_tokens, call_tool=call_tool, max_rounds=max_rounds, on_token=on_token,
                      on_round=on_round, on_call=on_call,
                      forced=[encode(text, allowed_special="all") for text in forced])
    finally:
        model.close()
    if streams:
        streams[-1].finish()
    if as_json:
        print_json({"tools": [asdict(t) for t in tools], "stopped": result.stopped,
                    "calls": [{"name": c.name, "arguments": c.arguments} for c in result.calls],
                    "turns": [{k: v for k, v in asdict(t).items() if v is not None} for t in result.turns]})
        return
    err.print(f"{len(result.calls)} tool calls, {len(result.generations)} rounds; stopped: {result.stopped}",
              highlight=False)
