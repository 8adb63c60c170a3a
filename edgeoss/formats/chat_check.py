"""Does a chat template render what openai-harmony renders? Checked on a fixed set of conversations.

An artifact carries a Jinja chat template (the checkpoint's own, edgeoss's harmony one, or a user's file), and the
apps and engines that use it (transformers' apply_chat_template, llama.cpp's Jinja path, onnxruntime-genai's
callers) render prompts with it, while edgeoss and the Android app render with openai-harmony. Where the two
disagree, the model sees different prompts depending on who renders them. `differences(template)` renders each
conversation of CONVERSATIONS both ways (the template with jinja2, set up as transformers sets it up) and names
the first difference of each; package and parity report them.

llama.cpp's own C++ formatter, the one llama-cpp-python reaches (`llama_chat_apply_template`), does not run
Jinja: it recognizes a gpt-oss template by its tokens and writes bare messages (no system message, no channels,
an earlier answer ended by <|return|>), so `llamacpp_differences` names where it departs from openai-harmony;
an app on llama.cpp should render prompts with the template (llama-server --jinja) or with openai-harmony.

The published gpt-oss template differs from openai-harmony on purpose in one place (it writes "\\n\\n" after a
system or developer instructions block; ../shared/notes/checkpoint.md), so it is reported, not refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from ..errors import TokenizerError
from . import tokenizer
from .harmony import Turn, render_prompt
from .tools import tools_from_json

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Gets the weather.",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
        "days": {"type": "array", "items": {"type": "integer"}}}}}}
PING = {"type": "function", "function": {"name": "ping", "description": "No arguments."}}


@dataclass(frozen=True)
class Conversation:
    name: str
    messages: list[dict]  # transformers' chat messages
    turns: list[Turn]  # the same for edgeoss.formats.harmony.render_prompt
    developer: str | None = None
    tools: tuple[dict, ...] = ()


CONVERSATIONS = (
    Conversation("one user message", [{"role": "user", "content": "Hello"}], [Turn("user", "Hello")]),
    Conversation("instructions and two turns",
                 [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "a"},
                  {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
                 [Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c")], developer="Be brief."),
    Conversation("tools, a call and its result",
                 [{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "thinking": "Need the tool.", "tool_calls": [
                      {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                  {"role": "tool", "content": '{"temp": 20}'}],
                 [Turn("user", "Weather in Paris?"), Turn("assistant", "Need the tool.", channel="analysis"),
                  Turn("assistant", '{"city": "Paris"}', channel="commentary", recipient="functions.get_weather"),
                  Turn("tool", '{"temp": 20}', name="functions.get_weather")], tools=(WEATHER, PING)),
)


def render_template(template: str, messages: list[dict], **kwargs) -> str:
    """The template rendered with jinja2 as transformers' apply_chat_template renders it (sandboxed, trim_blocks,
    lstrip_blocks, loop controls, raise_exception, tojson), with the generation prompt."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=True, **kwargs)
    except jinja2.exceptions.TemplateError as e:
        raise TokenizerError(f"the chat template fails to render: {e}") from None


def differences(template: str) -> list[str]:
    """One line per conversation on which the template and openai-harmony render different text."""
    found, today = [], datetime.now().strftime("%Y-%m-%d")  # templates that ask strftime_now get today too
    for c in CONVERSATIONS:
        kwargs = dict(reasoning_effort="medium", current_date=today)
        if c.tools:
            kwargs["tools"] = list(c.tools)
        try:
            ours = render_template(template, c.messages, **kwargs)
        except TokenizerError as e:
            found.append(f"{c.name}: {e}")
            continue
        theirs = tokenizer.decode(render_prompt(c.turns, developer=c.developer, date=today,
                                                tools=tools_from_json(list(c.tools))))
        if ours != theirs:
            found.append(f"{c.name}: {_first_difference(ours, theirs, 'the template')}")
    return found


def _first_difference(ours: str, theirs: str, who: str) -> str:
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return f"from character {at}, {who} writes {ours[at:at + 24]!r}, openai-harmony {theirs[at:at + 24]!r}"


def summary(template: str) -> str:
    """One line for a report: agreement, or the number of conversations that differ and the first difference."""
    found = differences(template)
    if not found:
        return f"renders as openai-harmony on all {len(CONVERSATIONS)} test conversations"
    return f"differs from openai-harmony on {len(found)} of {len(CONVERSATIONS)} test conversations ({found[0]})"


def llamacpp_render(template: str, messages: list[dict]) -> str:
    """What llama.cpp's C formatter (llama_chat_apply_template) writes for role/content messages."""
    import ctypes

    import llama_cpp

    chat = (llama_cpp.llama_chat_message * len(messages))()
    keep = []  # the C strings must outlive the call
    for slot, m in zip(chat, messages):
        role, content = m["role"].encode(), (m.get("content") or "").encode()
        keep += [role, content]
        slot.role, slot.content = role, content
    size = 4 * (len(template) + sum(len(m.get("content") or "") for m in messages)) + 256
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_chat_apply_template(template.encode(), chat, len(messages), True, buf, size)
    if n < 0:
        raise TokenizerError("llama.cpp does not recognize this chat template")
    return buf.raw[:n].decode("utf-8", "replace")


def llamacpp_differences(template: str) -> list[str]:
    """Where llama.cpp's C formatter departs from openai-harmony on the conversations without tools (it has none)."""
    found = []
    for c in (c for c in CONVERSATIONS if not c.tools):
        ours = llamacpp_render(template, c.messages)
        theirs = tokenizer.decode(render_prompt(c.turns, developer=c.developer))
        if ours != theirs:
            found.append(f"{c.name}: {_first_difference(ours, theirs, 'llama.cpp')}")
    return found
