"""Function tools in harmony: the app's functions declared to gpt-oss, its calls read back, results returned.

    tools = load_tools("tools.json")                                  # [{"name", "description", "parameters"}]
    ids = render_prompt([("user", "What time is it?")], tools=tools)  # edgeoss.formats.harmony
    ...generate, feeding a CompletionParser, until <|call|>...
    call = tool_call(parser.messages[-1])                             # ToolCall("get_time", {"fmt": "iso"})
    turns += call_turns(call, result_text)                            # the call and its result, for the next turn

Harmony declares function tools in the developer message, rendered by openai-harmony as a TypeScript-like
`namespace functions { ... }` from their JSON schemas, and the system message says that calls go to the
commentary channel. The model calls a tool with a message on the commentary channel to `functions.NAME`
(`<|constrain|>json`), ended by `<|call|>`; the result comes back as a message from `functions.NAME` to the
assistant. A tools file holds a JSON list of tools, each either {"name", "description", "parameters"} or
OpenAI's {"type": "function", "function": {...}}; "parameters" is a JSON schema of type object (optional).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import EdgeossError, UsageError
from ..jsonfile import read_json

NAMESPACE = "functions"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ToolCallError(EdgeossError):
    """The model called a tool with arguments that are not a JSON object, or a tool nobody declared."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None  # a JSON schema of type object; None: the tool takes nothing

    @property
    def recipient(self) -> str:
        return f"{NAMESPACE}.{self.name}"


def tools_from_json(data: Any, where: str = "tools") -> list[Tool]:
    """Tools from their JSON form (a list); anything malformed is a UsageError naming the entry."""
    if not isinstance(data, list):
        raise UsageError(f"{where}: expected a JSON list of tools")
    tools = []
    for i, entry in enumerate(data):
        if isinstance(entry, dict) and entry.get("type") == "function" and isinstance(entry.get("function"), dict):
            entry = entry["function"]
        if not isinstance(entry, dict):
            raise UsageError(f"{where}: tool {i} is not an object")
        name, description, parameters = entry.get("name"), entry.get("description", ""), entry.get("parameters")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise UsageError(f"{where}: tool {i}: name {name!r} must be an identifier (letters, digits, _)")
        if not isinstance(description, str):
            raise UsageError(f"{where}: tool {name}: description must be a string")
        if parameters is not None and (not isinstance(parameters, dict) or parameters.get("type") != "object"):
            raise UsageError(f"{where}: tool {name}: parameters must be a JSON schema of type object")
        tools.append(Tool(name, description, parameters))
    names = [t.name for t in tools]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise UsageError(f"{where}: tool {duplicate} is declared twice")
    return tools


def load_tools(path: str | Path) -> list[Tool]:
    return tools_from_json(read_json(path, "tools file"), str(path))


def harmony_tools(tools: Iterable[Tool]) -> list:
    """openai-harmony ToolDescriptions for the developer message."""
    import openai_harmony as oh

    return [oh.ToolDescription.new(t.name, t.description, parameters=t.parameters) for t in tools]


SYSTEM_NOTE = "\nCalls to these tools must go to the commentary channel: 'functions'."  # after the channels line


def developer_tools_text(tools: Sequence[Tool]) -> str:
    """The developer message's tools section ("# Tools\n\n## functions\n\nnamespace functions {...}") exactly as
    openai-harmony renders it, for an app that renders prompts itself (the Android bundle carries it): the app
    appends it to the developer message (after "# Instructions\n\n...", separated by a blank line) and adds
    SYSTEM_NOTE to the system message."""
    import openai_harmony as oh

    from .harmony import harmony_encoding

    content = oh.DeveloperContent.new().with_function_tools(harmony_tools(tools))
    ids = harmony_encoding().render(oh.Message.from_role_and_content(oh.Role.DEVELOPER, content))
    text = harmony_encoding().decode_utf8(ids)
    head, tail = "<|start|>developer<|message|>", "<|end|>"
    if not (text.startswith(head) and text.endswith(tail)):
        raise AssertionError(f"openai-harmony rendered a developer message as {text[:60]!r}")
    return text[len(head):-len(tail)]


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: the tool's name, its arguments, and the JSON text as written."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    text: str = "{}"

    @property
    def recipient(self) -> str:
        return f"{NAMESPACE}.{self.name}"


def tool_call(message, tools: Sequence[Tool] | None = None) -> ToolCall | None:
    """The call in a parsed assistant message (edgeoss.formats.harmony.ParsedMessage), None if it calls nothing.
    Arguments that are not a JSON object, or a tool not among `tools` (when given), are a ToolCallError."""
    recipient = message.recipient
    if not recipient or not recipient.startswith(f"{NAMESPACE}."):
        return None
    name = recipient[len(NAMESPACE) + 1:]
    if tools is not None and name not in {t.name for t in tools}:
        raise ToolCallError(f"the model called {recipient}, which is not among the declared tools "
                            f"({', '.join(t.name for t in tools) or 'none'})")
    text = message.text.strip() or "{}"
    try:
        arguments = json.loads(text)
    except json.JSONDecodeError as e:
        raise ToolCallError(f"the model called {recipient} with arguments that are not JSON ({e.msg} at "
                            f"character {e.pos}): {text[:200]!r}") from None
    if not isinstance(arguments, dict):
        raise ToolCallError(f"the model called {recipient} with {type(arguments).__name__} arguments, not an "
                            f"object: {text[:200]!r}")
    return ToolCall(name, arguments, text)


def call_turns(call: ToolCall, result: str) -> list:
    """The call and its result as the next turns of the conversation (render_prompt's Turn)."""
    from .harmony import Turn

    return [Turn("assistant", call.text, channel="commentary", recipient=call.recipient),
            Turn("tool", result, name=call.recipient)]
