"""The harmony chat format of gpt-oss, through openai-harmony, offline.

- `render_prompt()`: system (reasoning effort, optional date) + optional developer instructions and function
  tools (edgeoss.formats.tools) + user / assistant / tool turns -> token ids ending in `<|start|>assistant`,
  ready for completion. Earlier analysis is dropped as openai-harmony drops it (before a final answer).
- `STOP_TOKENS` / `TURN_STOP_TOKENS`: where generation stops.
- `CompletionParser`: consumes generated ids one at a time, exposes the current channel (analysis / commentary /
  final) and each text delta while streaming, and the messages so far; truncated or malformed output never
  raises. `parse_completion()` is the same on a finished list of ids.

openai-harmony downloads o200k_base.tiktoken unless `TIKTOKEN_ENCODINGS_BASE` names a folder holding it; the
encoding is loaded with that variable pointing at edgeoss's verified copy in the user cache.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..errors import TokenizerError, UsageError
from .tokenizer import SPECIAL, VOCAB_FILENAME, vocab_dir

REASONING_EFFORTS = ("low", "medium", "high")
ROLES = ("user", "assistant", "tool")
CHANNELS = ("analysis", "commentary", "final")
# Stop generation at any of these: <|return|> ends the answer, <|call|> a tool call, <|end|> any one message.
STOP_TOKENS = (SPECIAL.return_, SPECIAL.call, SPECIAL.end)
# Only these to let the model write its analysis message(s) and go on to its answer in one run.
TURN_STOP_TOKENS = (SPECIAL.return_, SPECIAL.call)

_ENV_LOCK = threading.Lock()


@functools.cache
def harmony_encoding():
    """openai-harmony's HarmonyGptOss encoding, loaded from the local vocabulary (never the network)."""
    import openai_harmony as oh

    folder = vocab_dir()
    with _ENV_LOCK:
        before = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
        os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(folder)
        try:
            return oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
        except oh.HarmonyError as e:
            raise TokenizerError(f"{folder / VOCAB_FILENAME}: openai-harmony cannot load it ({e})") from e
        finally:
            if before is None:
                del os.environ["TIKTOKEN_ENCODINGS_BASE"]
            else:
                os.environ["TIKTOKEN_ENCODINGS_BASE"] = before


@dataclass(frozen=True)
class Turn:
    """One earlier message of the conversation: role "user"; "assistant" (its final answer, or another channel; a
    tool call has channel "commentary" and recipient "functions.NAME", its arguments as text); or "tool" (a
    result, from `name` = "functions.NAME")."""

    role: str
    text: str
    channel: str | None = None
    recipient: str | None = None
    name: str | None = None


def render_prompt(turns: Sequence[Turn | tuple[str, str]], *, reasoning: str = "medium", date: str | None = None,
                  developer: str | None = None, tools: Sequence = ()) -> list[int]:
    """Token ids of the conversation, ending in `<|start|>assistant` for the model to continue.

    `reasoning` is low / medium / high; `date` (YYYY-MM-DD) adds "Current date:" to the system message;
    `developer` becomes the developer message's instructions; `tools` (edgeoss.formats.tools.Tool) are declared
    in the developer message, and the system message then says where their calls go."""
    import openai_harmony as oh

    chat = conversation(turns, reasoning=reasoning, date=date, developer=developer, tools=tools)
    return harmony_encoding().render_conversation_for_completion(chat, oh.Role.ASSISTANT)


def conversation(turns: Sequence[Turn | tuple[str, str]], *, reasoning: str = "medium", date: str | None = None,
                 developer: str | None = None, tools: Sequence = ()):
    """The openai-harmony Conversation that `render_prompt` renders."""
    import openai_harmony as oh

    from .tools import harmony_tools

    if reasoning not in REASONING_EFFORTS:
        raise UsageError(f"reasoning effort {reasoning!r}: expected one of {', '.join(REASONING_EFFORTS)}")
    system = oh.SystemContent.new().with_reasoning_effort(oh.ReasoningEffort(reasoning.capitalize()))
    if date:
        system = system.with_conversation_start_date(date)
    messages = [oh.Message.from_role_and_content(oh.Role.SYSTEM, system)]
    if developer or tools:
        content = oh.DeveloperContent.new()
        if developer:
            content = content.with_instructions(developer)
        if tools:
            content = content.with_function_tools(harmony_tools(tools))
        messages.append(oh.Message.from_role_and_content(oh.Role.DEVELOPER, content))
    messages += [_message(oh, turn) for turn in map(_as_turn, turns)]
    return oh.Conversation.from_messages(messages)


def _message(oh, turn: Turn):
    if turn.role == "tool":  # a tool's result, back to the assistant
        author = oh.Author.new(oh.Role.TOOL, turn.name)
        return oh.Message.from_author_and_content(author, turn.text).with_recipient("assistant") \
            .with_channel("commentary")
    message = oh.Message.from_role_and_content(oh.Role(turn.role), turn.text)
    if turn.role == "user":
        return message
    if turn.recipient:  # a tool call
        return message.with_channel(turn.channel or "commentary").with_recipient(turn.recipient) \
            .with_content_type("<|constrain|>json")
    return message.with_channel(turn.channel or "final")


def _as_turn(turn: Turn | tuple[str, str]) -> Turn:
    turn = turn if isinstance(turn, Turn) else Turn(*turn)
    if turn.role not in ROLES:
        raise UsageError(f"turn role {turn.role!r}: expected one of {', '.join(ROLES)}")
    if turn.channel is not None and turn.channel not in CHANNELS:
        raise UsageError(f"turn channel {turn.channel!r}: expected one of {', '.join(CHANNELS)}")
    if turn.role == "tool" and not turn.name:
        raise UsageError("a tool turn needs the tool's name (functions.NAME)")
    return turn


# ---- parsing what the model writes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Delta:
    """New text of the message being written, and its channel (None before the header names one)."""

    channel: str | None
    text: str


@dataclass(frozen=True)
class ParsedMessage:
    """One assistant message: channel analysis / commentary / final (None if the model named none), the
    recipient of a tool call ("functions.x"), its text, and whether it ended with its end token."""

    channel: str | None
    text: str
    recipient: str | None = None
    complete: bool = True


class CompletionParser:
    """Feed the ids the model generates after `<|start|>assistant`, one at a time.

    `feed()` returns the text delta of that token (or None); `channel` / `text` describe the message being
    written; `messages` lists every message so far, the unfinished one last with complete=False. A token the
    format does not allow is skipped, and parsing resumes at the next `<|start|>`; `errors` counts them. After
    `<|return|>` or `<|call|>`, `done` is True and further tokens are ignored."""

    def __init__(self) -> None:
        self._closed: list[ParsedMessage] = []  # messages of parsers replaced after an error
        self._parser = self._new_parser(assistant_header=True)
        self._resync = False
        self.errors = 0
        self.done = False
        self.last_delta: Delta | None = None

    @staticmethod
    def _new_parser(assistant_header: bool):
        import openai_harmony as oh

        role = oh.Role.ASSISTANT if assistant_header else None
        return oh.StreamableParser(harmony_encoding(), role=role, strict=False)

    def feed(self, token: int) -> Delta | None:
        import openai_harmony as oh

        self.last_delta = None  # what the last token fed added (for a caller that did not feed it)
        if self.done:
            return None
        if self._resync:
            if token != SPECIAL.start:
                return None
            self._closed, self._parser, self._resync = self.messages, self._new_parser(False), False
        try:
            self._parser.process(token)
        except oh.HarmonyError:
            self.errors += 1
            self._resync = True
            return None
        if token in TURN_STOP_TOKENS:
            self.done = True
        delta = self._parser.last_content_delta
        self.last_delta = Delta(self._parser.current_channel, delta) if delta else None
        return self.last_delta

    def feed_all(self, tokens: Iterable[int]) -> list[Delta]:
        return [d for d in map(self.feed, tokens) if d is not None]

    @property
    def channel(self) -> str | None:
        """Channel of the message being written (None between messages)."""
        return None if self._resync else self._parser.current_channel

    @property
    def text(self) -> str:
        """Text so far of the message being written."""
        return "" if self._resync else self._parser.current_content

    @property
    def messages(self) -> list[ParsedMessage]:
        done = [ParsedMessage(m.channel, "".join(getattr(c, "text", "") for c in m.content), m.recipient)
                for m in self._parser.messages]
        open_ = []
        if not self._resync and self._parser.state_data["state"] == "Content":
            open_ = [ParsedMessage(self._parser.current_channel, self._parser.current_content,
                                   self._parser.current_recipient, complete=False)]
        return [*self._closed, *done, *open_]

    def final_text(self) -> str:
        """The answer: the text of the final-channel messages so far."""
        return "".join(m.text for m in self.messages if m.channel == "final")


def parse_completion(tokens: Iterable[int]) -> list[ParsedMessage]:
    """The messages in a completion (the ids after `<|start|>assistant`), complete or cut off anywhere."""
    parser = CompletionParser()
    parser.feed_all(tokens)
    return parser.messages
