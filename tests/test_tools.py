"""Function tools in harmony (issue 21, part 1): declared through openai-harmony, calls parsed back from the token
stream (whole and one token at a time), results rendered as the next turn."""

from __future__ import annotations

import json

import openai_harmony as oh
import pytest

from edgeoss.errors import UsageError
from edgeoss.formats import tokenizer
from edgeoss.formats.harmony import CompletionParser, Turn, harmony_encoding, parse_completion, render_prompt
from edgeoss.formats.tools import Tool, ToolCall, ToolCallError, call_turns, load_tools, tool_call, tools_from_json

TOOLS = [
    {"name": "ping", "description": "No parameters"},
    {"type": "function", "function": {  # OpenAI's form
        "name": "get_time", "description": "Current time in a time zone",
        "parameters": {"type": "object", "properties": {
            "tz": {"type": "string", "description": "IANA zone", "default": "UTC"},
            "fmt": {"type": "string", "enum": ["iso", "unix"]}}, "required": ["fmt"]}}},
    {"name": "create_event", "description": "Add an event to the calendar", "parameters": {
        "type": "object", "required": ["title", "when"], "properties": {
            "title": {"type": "string"},
            "when": {"type": "object", "properties": {"start": {"type": "string"}, "minutes": {"type": "integer"}},
                     "required": ["start"]},
            "guests": {"type": "array", "items": {"type": "string"}},
            "reminder": {"type": "boolean", "default": True}}}},
]


def _theirs(tools: list[dict], turns: list) -> list[int]:
    """The same conversation built with openai-harmony alone."""
    descriptions = [oh.ToolDescription.new(t["name"], t.get("description", ""), parameters=t.get("parameters"))
                    for t in (x.get("function", x) for x in tools)]
    system = oh.SystemContent.new().with_reasoning_effort(oh.ReasoningEffort.LOW)
    developer = oh.DeveloperContent.new().with_instructions("Be brief.").with_function_tools(descriptions)
    messages = [oh.Message.from_role_and_content(oh.Role.SYSTEM, system),
                oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer), *turns]
    return harmony_encoding().render_conversation_for_completion(oh.Conversation.from_messages(messages),
                                                                 oh.Role.ASSISTANT)


@pytest.mark.parametrize("which", [[0], [1], [2], [0, 1, 2]])
def test_tools_render_as_openai_harmony_renders_them(which):
    """No parameters, enums and a default, nested objects, arrays and booleans, several tools: the same tokens."""
    chosen = [TOOLS[i] for i in which]
    tools = tools_from_json(chosen)
    ours = render_prompt([("user", "What time is it?")], reasoning="low", developer="Be brief.", tools=tools)
    assert ours == _theirs(chosen, [oh.Message.from_role_and_content(oh.Role.USER, "What time is it?")])
    text = tokenizer.decode(ours)
    assert "Calls to these tools must go to the commentary channel: 'functions'." in text
    assert "namespace functions {" in text and all(f"type {t.name} = " in text for t in tools)
    if 1 in which:
        assert 'tz?: string, // default: "UTC"' in text and 'fmt: "iso" | "unix",' in text


def test_a_call_and_its_result_render_as_the_next_turns():
    call = ToolCall("get_time", {"fmt": "iso"}, '{"fmt":"iso"}')
    turns = [Turn("user", "What time is it?"), *call_turns(call, '{"time": "12:00"}')]
    ours = render_prompt(turns, reasoning="low", developer="Be brief.", tools=tools_from_json(TOOLS))
    theirs = _theirs(TOOLS, [
        oh.Message.from_role_and_content(oh.Role.USER, "What time is it?"),
        oh.Message.from_role_and_content(oh.Role.ASSISTANT, '{"fmt":"iso"}').with_channel("commentary")
        .with_recipient("functions.get_time").with_content_type("<|constrain|>json"),
        oh.Message.from_author_and_content(oh.Author.new(oh.Role.TOOL, "functions.get_time"), '{"time": "12:00"}')
        .with_recipient("assistant").with_channel("commentary")])
    assert ours == theirs
    text = tokenizer.decode(ours)
    assert '<|start|>functions.get_time to=assistant<|channel|>commentary<|message|>{"time": "12:00"}<|end|>' in text


def test_earlier_analysis_is_dropped_once_answered():
    turns = [Turn("user", "Hi"), Turn("assistant", "SECRET reasoning", channel="analysis"),
             Turn("assistant", "Hello!"), Turn("user", "And now?")]
    text = tokenizer.decode(render_prompt(turns))
    assert "SECRET" not in text and "<|channel|>final<|message|>Hello!" in text


def _completion(*messages) -> list[int]:
    """What the model would generate after `<|start|>assistant`: openai-harmony's rendering of the messages, the
    first one's `<|start|>assistant` header removed."""
    enc = harmony_encoding()
    ids = [t for m in messages for t in enc.render(m)]
    header = enc.encode("assistant", allowed_special="all")
    assert ids[0] == tokenizer.SPECIAL.start and ids[1:1 + len(header)] == header
    return ids[1 + len(header):]


@pytest.mark.parametrize("one_at_a_time", [False, True])
def test_a_call_is_parsed_from_the_stream(one_at_a_time):
    arguments = {"title": "Dentist", "when": {"start": "2026-12-08T09:00", "minutes": 30}, "guests": ["Ann"]}
    ids = _completion(
        oh.Message.from_role_and_content(oh.Role.ASSISTANT, "The user wants an event.").with_channel("analysis"),
        oh.Message.from_role_and_content(oh.Role.ASSISTANT, json.dumps(arguments)).with_channel("commentary")
        .with_recipient("functions.create_event").with_content_type("<|constrain|>json"))
    assert ids[-1] == tokenizer.SPECIAL.call
    if one_at_a_time:
        parser = CompletionParser()
        for i, token in enumerate(ids):
            parser.feed(token)
            assert parser.done == (i == len(ids) - 1)  # <|call|> ends the turn
        messages = parser.messages
    else:
        messages = parse_completion(ids)
    assert [m.channel for m in messages] == ["analysis", "commentary"]
    call = tool_call(messages[-1], tools_from_json(TOOLS))
    assert call == ToolCall("create_event", arguments, json.dumps(arguments))
    assert tool_call(messages[0]) is None  # analysis calls nothing


def test_malformed_calls_are_clear_errors():
    def called(text: str, recipient: str = "functions.get_time"):
        ids = _completion(oh.Message.from_role_and_content(oh.Role.ASSISTANT, text).with_channel("commentary")
                          .with_recipient(recipient).with_content_type("<|constrain|>json"))
        return tool_call(parse_completion(ids)[-1], tools_from_json(TOOLS))

    with pytest.raises(ToolCallError, match=r"functions.get_time with arguments that are not JSON \(Expecting"):
        called('{"fmt": "iso"')
    with pytest.raises(ToolCallError, match="with list arguments, not an object"):
        called('["iso"]')
    with pytest.raises(ToolCallError, match="functions.launch, which is not among the declared tools"):
        called("{}", "functions.launch")
    assert called("") == ToolCall("get_time", {}, "{}")  # a call with nothing written: no arguments


@pytest.mark.parametrize("data, message", [
    ({"name": "x"}, "expected a JSON list"),
    ([{"name": "get time"}], "must be an identifier"),
    ([{"name": "x", "parameters": {"type": "array"}}], "JSON schema of type object"),
    ([{"name": "x"}, {"name": "x"}], "declared twice"),
    ([{"name": "x", "description": 3}], "description must be a string"),
])
def test_bad_tools_files_are_one_line(tmp_path, data, message):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match=message):
        load_tools(path)
    assert load_tools(_written(tmp_path, TOOLS))[1] == Tool(
        "get_time", "Current time in a time zone", TOOLS[1]["function"]["parameters"])


def _written(tmp_path, data) -> str:
    path = tmp_path / "good.json"
    path.write_text(json.dumps(data))
    return str(path)


CALL = ('<|channel|>analysis<|message|>Need the time.<|end|><|start|>assistant to=functions.get_time<|channel|>'
        'commentary <|constrain|>json<|message|>{"fmt": "iso"}<|call|>')
ANSWER = "<|channel|>final<|message|>It is 12:00.<|return|>"


def test_run_with_tools_round_trip_on_the_tiny_model(tiny_hf, tmp_path):
    """`edgeoss run --tools --tool-command` on random weights, the model's writing forced (--force per round): the
    call reaches the command as JSON, its stdout goes back as the tool's message, the model answers."""
    import sys

    from conftest import run_main

    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    command = tmp_path / "tool.py"
    command.write_text("import json, sys\nc = json.load(sys.stdin)\nprint(json.dumps({'time': '12:00', 'got': c}))\n")
    code, stdout, stderr = run_main(["run", str(tiny_hf), "--prompt", "What time is it?", "--tools", str(tools),
                                     "--tool-command", f"{sys.executable} {command}", "--force", CALL, "--force",
                                     ANSWER, "--temperature", "0", "--max-new-tokens", "48", "--json"],
                                    with_stdout=True)
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["stopped"] == "answer" and report["calls"] == [{"name": "get_time", "arguments": {"fmt": "iso"}}]
    roles = [(t["role"], t.get("channel"), t.get("recipient") or t.get("name")) for t in report["turns"]]
    assert roles == [("user", None, None), ("assistant", "analysis", None),
                     ("assistant", "commentary", "functions.get_time"), ("tool", None, "functions.get_time"),
                     ("assistant", "final", None)]
    result = json.loads(report["turns"][3]["text"])
    assert result == {"time": "12:00", "got": {"name": "get_time", "arguments": {"fmt": "iso"}}}
    code, stderr = run_main(["run", str(tiny_hf), "--prompt", "hi", "--tools", str(tools), "--tool-command", "false",
                             "--force", CALL, "--max-new-tokens", "48"])
    assert code == 2 and "exited 1 on functions.get_time" in stderr.strip().splitlines()[-1]
    code, stderr = run_main(["run", str(tiny_hf), "--prompt", "hi", "--tool-command", "false"])
    assert code == 2 and "go with --tools" in stderr


def test_a_chat_template_is_checked_against_openai_harmony():
    """edgeoss's template renders the test conversations (tools included) as openai-harmony does; one that writes
    the published template's "\\n\\n" after the instructions is named, with where it differs."""
    from edgeoss.formats import chat_check

    assert chat_check.differences(tokenizer.chat_template()) == []
    assert chat_check.summary(tokenizer.chat_template()).startswith("renders as openai-harmony on all 3")
    published_like = tokenizer.chat_template().replace('{{- "# Instructions\\n\\n" + instructions -}}',
                                                       '{{- "# Instructions\\n\\n" + instructions + "\\n\\n" -}}')
    assert published_like != tokenizer.chat_template()
    found = chat_check.differences(published_like)
    assert len(found) == 1 and found[0].startswith("instructions and two turns: from character")
    assert "'\\n\\n<|end|>" in found[0]
    broken = chat_check.differences("{{ raise_exception('no') }}")
    assert len(broken) == 3 and "fails to render: no" in broken[0]


def test_llamacpps_own_formatter_is_compared_too():
    """llama.cpp's C formatter (what llama-cpp-python reaches) writes bare harmony messages: no system message, no
    channel, an earlier answer ended by <|return|>; the check says where, against openai-harmony."""
    from edgeoss.formats import chat_check

    text = chat_check.llamacpp_render(tokenizer.chat_template(), [{"role": "user", "content": "Hello"}])
    assert text == "<|start|>user<|message|>Hello<|end|><|start|>assistant"
    found = chat_check.llamacpp_differences(tokenizer.chat_template())
    assert len(found) == 2 and found[0].startswith("one user message: from character 9, llama.cpp writes "
                                                   "'user<|message|>Hello")  # harmony: the system message


def test_the_java_cores_call_fixture_is_what_openai_harmony_renders():
    """android_demo's HarmonyStreamTest parses CALL; it must be openai-harmony's own rendering of that call."""
    literal = _java_constant("android_demo/core/src/test/java/org/edgeoss/core/HarmonyStreamTest.java", "CALL")
    ids = _completion(
        oh.Message.from_role_and_content(oh.Role.ASSISTANT, "Need the time.").with_channel("analysis"),
        oh.Message.from_role_and_content(oh.Role.ASSISTANT, '{"fmt": "iso", "tz": "Europe/Paris"}')
        .with_channel("commentary").with_recipient("functions.get_time").with_content_type("<|constrain|>json"))
    assert literal == tokenizer.decode(ids)


def _java_constant(path: str, name: str) -> str:
    import re
    from pathlib import Path

    java = (Path(__file__).resolve().parents[1] / path).read_text()
    block = re.search(rf'String {name} = (.*?);\s*\n', java, re.S).group(1)
    return "".join(json.loads(part) if part.startswith('"') else _java_constant(path, part)
                   for part in re.findall(r'"(?:[^"\\]|\\.)*"|[A-Z_]+', block))


def test_the_java_prompt_with_tools_is_what_openai_harmony_renders():
    """The Android core renders a prompt with the bundle's pre-rendered tools section; both its fixtures equal
    openai-harmony's rendering (via edgeoss.formats.tools.developer_tools_text and render_prompt)."""
    from edgeoss.formats.tools import developer_tools_text

    path = "android_demo/core/src/test/java/org/edgeoss/core/HarmonyPromptTest.java"
    tools = tools_from_json([{"name": "get_time", "description": "Current time", "parameters": {
        "type": "object", "properties": {"tz": {"type": "string", "default": "UTC"}}}}])
    assert _java_constant(path, "TOOLS_SECTION") == developer_tools_text(tools)
    expected = render_prompt([("user", "What time is it?")], reasoning="low", date="2025-01-31",
                             developer="Be brief.", tools=tools)
    assert _java_constant(path, "WITH_TOOLS") == tokenizer.decode(expected)


def test_an_android_bundle_carries_the_tools_and_their_rendered_section(tiny_hf, tmp_path):
    from conftest import run_main
    from edgeoss.exporters.gguf import export_gguf
    from edgeoss.formats.tools import SYSTEM_NOTE, developer_tools_text

    gguf = export_gguf(tiny_hf, tmp_path / "tiny.gguf", progress=False)[0]
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    code, stderr = run_main(["package", "android", str(gguf), "--device", "pixel-9-pro", "--context", "256",
                             "--tools", str(tools), "-o", str(tmp_path / "bundle")])
    assert code == 0, stderr
    assert run_main(["package", "verify", str(tmp_path / "bundle")])[0] == 0  # the tools files are checksummed
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["tools"]["names"] == ["ping", "get_time", "create_event"]
    assert manifest["tools"]["system_note"] == SYSTEM_NOTE
    section = (tmp_path / "bundle" / manifest["tools"]["developer_section"]).read_text()
    assert section == developer_tools_text(load_tools(tools))
    assert tools_from_json(json.loads((tmp_path / "bundle" / "tools.json").read_text())) == load_tools(tools)
    tools.write_text('[{"name": "bad name"}]')
    code, stderr = run_main(["package", "android", str(gguf), "--device", "pixel-9-pro", "--tools", str(tools),
                             "-o", str(tmp_path / "none")])
    assert code == 2 and "must be an identifier" in stderr and not (tmp_path / "none").exists()


def test_the_java_tool_result_turn_is_what_openai_harmony_renders():
    """ToolTurn.java appends a tool's result and the next assistant header to the conversation; that text is how
    openai-harmony renders the result message, then the generation prompt."""
    literal = _java_constant("android_demo/core/src/test/java/org/edgeoss/core/ToolTurnTest.java", "RESULT")
    result = '{"time": "2026-12-07T13:00:00+01:00", "tz": "Europe/Paris"}'
    message = oh.Message.from_author_and_content(oh.Author.new(oh.Role.TOOL, "functions.get_time"), result) \
        .with_recipient("assistant").with_channel("commentary")
    assert literal == tokenizer.decode(harmony_encoding().render(message)) + "<|start|>assistant"


@pytest.mark.parametrize("which", [[0], [1], [2], [0, 1, 2]])
def test_the_ggufs_template_renders_tools_as_openai_harmony(which, tiny_hf, tmp_path_factory):
    """The chat template a GGUF carries, rendered with jinja2 as transformers does, gives the text openai-harmony
    (and edgeoss.render_prompt) gives, for every tool set."""
    from edgeoss.exporters.gguf import export_gguf
    from edgeoss.formats.chat_check import render_template
    from edgeoss.formats.ggml_gguf import read_metadata

    gguf = tmp_path_factory.getbasetemp() / "tools-template.gguf"
    if not gguf.exists():
        export_gguf(tiny_hf, gguf, progress=False)
    template = read_metadata(gguf)["tokenizer.chat_template"]
    chosen = [TOOLS[i] for i in which]
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "What time is it?"}]
    text = render_template(template, messages, tools=chosen, reasoning_effort="low", current_date="2026-12-07")
    ids = render_prompt([("user", "What time is it?")], reasoning="low", date="2026-12-07", developer="Be brief.",
                        tools=tools_from_json(chosen))
    assert text == tokenizer.decode(ids)


def test_the_java_tool_loops_conversation_is_what_openai_harmony_renders():
    """ToolLoop.java appends the model's call and the tool's result to the prompt (so llama.cpp keeps its KV cache);
    that text equals openai-harmony's rendering of the whole conversation so far (render_prompt), and ROUND_ONE is
    openai-harmony's rendering of the analysis and the call."""
    path = "android_demo/core/src/test/java/org/edgeoss/core/ToolLoopTest.java"
    prompt = _java_constant("android_demo/core/src/test/java/org/edgeoss/core/HarmonyPromptTest.java", "WITH_TOOLS")
    tools = tools_from_json([{"name": "get_time", "description": "Current time", "parameters": {
        "type": "object", "properties": {"tz": {"type": "string", "default": "UTC"}}}}])
    result = '{"time": "2026-12-07T13:00:00+01:00", "tz": "Europe/Paris"}'
    turns = [Turn("user", "What time is it?"), Turn("assistant", "Need the time.", channel="analysis"),
             Turn("assistant", '{"tz": "Europe/Paris"}', channel="commentary", recipient="functions.get_time"),
             Turn("tool", result, name="functions.get_time")]
    expected = render_prompt(turns, reasoning="low", date="2025-01-31", developer="Be brief.", tools=tools)
    assert prompt + _java_constant(path, "AFTER_CALL") == tokenizer.decode(expected)
    ids = _completion(
        oh.Message.from_role_and_content(oh.Role.ASSISTANT, "Need the time.").with_channel("analysis"),
        oh.Message.from_role_and_content(oh.Role.ASSISTANT, '{"tz": "Europe/Paris"}')
        .with_channel("commentary").with_recipient("functions.get_time").with_content_type("<|constrain|>json"))
    assert _java_constant(path, "ROUND_ONE") == tokenizer.decode(ids)
