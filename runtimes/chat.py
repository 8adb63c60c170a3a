"""A conversation with function tools, on any engine: the app's loop around gpt-oss.

    result = chat(engine, [Turn("user", "What time is it?")], tools, call_tool=run_my_function)

Each round renders the conversation in harmony (edgeoss.formats.harmony.render_prompt, the tools declared),
generates until `<|return|>` (the answer) or `<|call|>` (a tool call), and parses what the model wrote. A call
goes to `call_tool(ToolCall) -> str`, and the call and its result become the next turns. Without `call_tool`, or
after `max_rounds` calls, the loop stops at the call. The analysis written before a call is kept for the next
round (harmony drops it only once a final answer follows).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from edgeoss.formats.harmony import TURN_STOP_TOKENS, CompletionParser, Turn, render_prompt
from edgeoss.formats.tools import Tool, ToolCall, call_turns, tool_call
from edgeoss.runtimes.engine import Engine
from edgeoss.runtimes.generate import Generation, Sampling, generate


@dataclass
class Chat:
    turns: list[Turn]  # the whole conversation, the prompt's turns first
    calls: list[ToolCall] = field(default_factory=list)
    generations: list[Generation] = field(default_factory=list)
    stopped: str = ""  # "answer", "call" (a call left unanswered), "max rounds", "max new tokens"

    @property
    def answer(self) -> str:
        return "".join(t.text for t in self.turns if t.role == "assistant" and (t.channel or "final") == "final"
                       and not t.recipient)


def chat(engine: Engine, turns: Sequence[Turn], tools: Sequence[Tool], *, reasoning: str = "medium",
         developer: str | None = None, sampling: Sampling = Sampling(), max_new_tokens: int = 256,
         call_tool: Callable[[ToolCall], str] | None = None, max_rounds: int = 4,
         on_token: Callable[[int], None] | None = None, on_round: Callable[[CompletionParser], None] | None = None,
         on_call: Callable[[ToolCall, str | None], None] | None = None,
         forced: Sequence[Sequence[int]] = ()) -> Chat:
    """Run the conversation to the model's answer (see the module docstring). on_round(parser) is called before
    each round's generation (the parser sees its tokens); on_call(call, result) after each call (result None when
    it is not answered); forced[i]: tokens the model is made to write first in round i (Sampling.forced)."""
    result = Chat(list(turns))
    for round_ in range(max_rounds + 1):
        ids = render_prompt(result.turns, reasoning=reasoning, developer=developer, tools=tools)
        parser = CompletionParser()
        if on_round:
            on_round(parser)

        def seen(token: int) -> None:
            parser.feed(token)
            if on_token:
                on_token(token)

        scripted = replace(sampling, forced=tuple(forced[round_])) if round_ < len(forced) else sampling
        generation = generate(engine, ids, max_new_tokens, scripted, TURN_STOP_TOKENS, on_token=seen)
        result.generations.append(generation)
        messages = [m for m in parser.messages if m.complete]
        call = tool_call(messages[-1], tools) if messages and generation.stop_token is not None else None
        result.turns += [Turn("assistant", m.text, channel=m.channel) for m in messages if not m.recipient]
        if call is None:
            result.stopped = "answer" if generation.stop_token is not None else "max new tokens"
            return result
        result.calls.append(call)
        if call_tool is None or round_ == max_rounds:
            if on_call:
                on_call(call, None)
            result.turns.append(call_turns(call, "")[0])
            result.stopped = "call" if call_tool is None else "max rounds"
            return result
        answer = call_tool(call)
        if on_call:
            on_call(call, answer)
        result.turns += call_turns(call, answer)
    raise AssertionError("unreachable")
