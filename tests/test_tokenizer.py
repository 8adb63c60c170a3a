"""edgeoss.formats.tokenizer and edgeoss.formats.harmony against the real libraries: tiktoken, openai-harmony, tokenizers,
transformers (and gguf-py / llama.cpp for the GGUF vocabulary). Nothing here touches the network."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import time

import numpy as np
import pytest

from edgeoss.formats import harmony, tokenizer as tok
from edgeoss.errors import TokenizerError, UsageError

TIKTOKEN_CACHE_KEY = "fb374d419588a4632f3f557e76b4b70aebbca790"  # sha1 of tiktoken's o200k_base.tiktoken URL

TEXTS = [
    "Hello, world! gpt-oss uses MXFP4 experts.\n  Ünïcödé 12345 — end.",
    "",
    " ",
    "   \n\n\t  x  \r\n\r\n   ",
    "1234567890 3.14159 -0.5e-10 1,000,000 ١٢٣ ½",
    "日本語のテキスト、中文文本。한국어 텍스트 🎉👍🏽 👨‍👩‍👧 e\u0301",
    "Привет, мир! Γειά σου Κόσμε! مرحبا بالعالم שלום עולם नमस्ते",
    "don't I'LL we've THEY'RE it's O'Neil's",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\n\nclass A:\n\tpass\n",
    "for (int i = 0; i < n; ++i) { s += a[i] * b[i]; }\n",
    "https://example.com/a/b?c=d&e=f#g  user@mail.org  ~/.cache/edgeoss",
    "ÀÉÎÕÜ àéîõü ÆØÅ æøå ßẞ ŁŃŚŹŻ",
    "\x00\x01\x7f \u200b\u00a0\u3000 \ufeff",
    "<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>",
    "<|startoftext|>a<|endoftext|>b<|reserved_200000|>c<|constrain|>json<|call|><|reserved_201087|>",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa " * 3,
    "!!!???...---___===+++***///\\\\\\|||",
]


def harmony_specials() -> set[str]:
    """The special tokens the HF and GGUF vocabularies know: one name per id (tiktoken also parses
    <|endofprompt|> as 200018, see test_endofprompt_is_the_one_difference)."""
    return set(tok.special_token_names())


@functools.cache
def corpus() -> tuple[str, ...]:
    """TEXTS plus some real source code and random mixtures of scripts."""
    import inspect
    import random

    rng = random.Random(1234)
    alphabet = [chr(c) for c in [*range(32, 127), *range(0xA0, 0x250), *range(0x370, 0x3FF), *range(0x400, 0x4FF),
                                 *range(0x4E00, 0x4E40), *range(0x1F600, 0x1F640)]] + ["\n", "\t", "\r", "  ", "'s"]
    fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(300)]
    return (*TEXTS, inspect.getsource(json.decoder), inspect.getsource(tok), *fuzz)


@pytest.fixture(scope="session")
def reference_tiktoken(tmp_path_factory):
    """tiktoken's own get_encoding('o200k_harmony'), offline: its cache seeded with the bundled vocabulary."""
    import tiktoken

    cache = tmp_path_factory.mktemp("tiktoken-cache")
    (cache / TIKTOKEN_CACHE_KEY).write_bytes(tok.read_vocab())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        mp.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # a download attempt would fail
        return tiktoken.get_encoding("o200k_harmony")


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory):
    """The Hugging Face tokenizer files, written once (merges from the user cache, derived there if missing)."""
    folder = tmp_path_factory.mktemp("hf-tokenizer")
    tok.write_hf_tokenizer_files(folder)
    return folder


@pytest.fixture(scope="session")
def fast_tokenizer(hf_folder):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(hf_folder / "tokenizer.json"))


@pytest.fixture(scope="session")
def hf_tokenizer(hf_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_folder)


# ---- the vocabulary file -----------------------------------------------------------------------------------------
def test_bundled_vocab_is_the_official_file():
    data = tok.read_vocab()
    assert hashlib.sha256(data).hexdigest() == tok.O200K_BASE_SHA256
    assert len(data) == 3_613_922 and data.count(b"\n") == tok.N_RANKS


def test_user_vocab_plain_and_gzip_accepted(tmp_path):
    plain = tmp_path / "o200k_base.tiktoken"
    plain.write_bytes(tok.read_vocab())
    packed = tmp_path / "vocab.tiktoken.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert tok.read_vocab(plain) == tok.read_vocab(packed) == tok.read_vocab()
    assert tok.get_encoding(str(packed)).encode("Hello, world!") == [13225, 11, 2375, 0]


@pytest.mark.parametrize("damage", ["missing", "one byte", "truncated", "bad gzip", "other vocabulary"])
def test_bad_vocab_is_a_one_line_tokenizer_error(tmp_path, damage):
    data = tok.read_vocab()
    path = tmp_path / "v.tiktoken"
    if damage == "one byte":
        path.write_bytes(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "bad gzip":
        path = tmp_path / "v.tiktoken.gz"
        path.write_bytes(gzip.compress(data)[:5000])
    elif damage == "other vocabulary":
        path.write_bytes(b"IQ== 0\n")
    with pytest.raises(TokenizerError) as err:
        tok.read_vocab(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    with pytest.raises(TokenizerError):
        tok.write_vocab(tmp_path / "out", path)
    assert not (tmp_path / "out" / tok.VOCAB_FILENAME).exists()


def test_missing_bundled_vocab_is_a_tokenizer_error(monkeypatch, tmp_path):
    monkeypatch.setattr(tok, "bundled_vocab_path", lambda: tmp_path / "nowhere" / "o200k_base.tiktoken.gz")
    with pytest.raises(TokenizerError, match="nowhere.*cannot read"):
        tok.read_vocab()


def test_write_vocab_and_cache_dir(tmp_path, monkeypatch):
    path = tok.write_vocab(tmp_path / "pkg")
    assert path == tmp_path / "pkg" / "o200k_base.tiktoken"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == tok.O200K_BASE_SHA256
    assert [p.name for p in path.parent.iterdir()] == ["o200k_base.tiktoken"]  # no temporary left behind
    monkeypatch.setenv("EDGEOSS_CACHE_DIR", str(tmp_path / "cache"))
    assert tok.cache_dir() == tmp_path / "cache"
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / tok.VOCAB_FILENAME).write_bytes(b"stale")
    assert tok.vocab_dir() == tmp_path / "cache"  # a damaged cached copy is replaced
    assert tok.read_vocab(tmp_path / "cache" / tok.VOCAB_FILENAME)


# ---- tiktoken --------------------------------------------------------------------------------------------------
def test_special_table():
    assert tok.SPECIAL.return_ == 200002 and tok.SPECIAL.call == 200012 and tok.SPECIAL.start == 200006
    names = tok.special_token_names()
    assert len(names) == tok.N_VOCAB - tok.N_RANKS == 1090
    assert names[:10] == ["<|startoftext|>", "<|endoftext|>", "<|reserved_200000|>", "<|reserved_200001|>",
                          "<|return|>", "<|constrain|>", "<|reserved_200004|>", "<|channel|>", "<|start|>", "<|end|>"]
    assert names[200008 - 199998] == "<|message|>" and names[200012 - 199998] == "<|call|>"
    assert names[200018 - 199998] == "<|reserved_200018|>" and names[-1] == "<|reserved_201087|>"
    specials = tok.special_tokens()
    assert len(specials) == 1091 and specials["<|endofprompt|>"] == specials["<|reserved_200018|>"] == 200018


def test_encoding_equals_tiktoken_get_encoding(reference_tiktoken):
    enc = tok.get_encoding()
    assert tok.get_encoding() is enc is tok.get_encoding(None)  # cached per process
    ref = reference_tiktoken
    assert (enc.name, enc.n_vocab, enc.max_token_value) == (ref.name, ref.n_vocab, ref.max_token_value)
    assert enc._pat_str == ref._pat_str
    assert enc._special_tokens == ref._special_tokens
    for text in corpus():
        ids = enc.encode(text, allowed_special="all")
        assert ids == ref.encode(text, allowed_special="all")
        assert enc.decode(ids) == text
    assert enc.decode(list(range(tok.N_RANKS, tok.N_VOCAB))) == ref.decode(list(range(tok.N_RANKS, tok.N_VOCAB)))
    sample = "Hello, world! gpt-oss uses MXFP4 experts.\n  Ünïcödé 12345 — end."
    assert tok.encode(sample) == [13225, 11, 2375, 0, 329, 555, 12, 2907, 8844, 49414, 20174, 19, 13071, 558, 220,
                                  120241, 191375, 43369, 377, 220, 7633, 2548, 2733, 1268, 13]
    with pytest.raises(ValueError):
        tok.encode("<|start|>", allowed_special=())


# ---- harmony -----------------------------------------------------------------------------------------------------
REFERENCE_PROMPT = [
    200006, 17360, 200008, 3575, 553, 17554, 162016, 11, 261, 4410, 6439, 2359, 22203, 656, 7788, 17527, 558, 87447,
    100594, 25, 220, 1323, 19, 12, 3218, 198, 6576, 3521, 25, 220, 1323, 20, 12, 3062, 12, 2922, 279, 30377, 289, 25,
    1932, 279, 2, 13888, 18403, 25, 8450, 11, 49159, 11, 1721, 13, 21030, 2804, 413, 7360, 395, 1753, 3176, 13, 200007,
    200006, 77944, 200008, 2, 68406, 279, 17045, 59453, 1151, 13, 200007, 200006, 1428, 200008, 4827, 382, 220, 17, 10,
    17, 30, 200007, 200006, 173781]


def test_render_prompt_reference():
    ids = harmony.render_prompt([("user", "What is 2+2?")], reasoning="high", date="2025-08-05",
                                developer="Answer tersely.")
    assert len(ids) == 85 and ids == REFERENCE_PROMPT
    assert "TIKTOKEN_ENCODINGS_BASE" not in __import__("os").environ  # set only while loading


def test_render_prompt_turns_and_options():
    ids = harmony.render_prompt([harmony.Turn("user", "a"), ("assistant", "b"), ("user", "c")], reasoning="low")
    text = tok.decode(ids)
    assert "Current date" not in text and "Reasoning: low" in text and "developer" not in text
    assert text.endswith("<|start|>user<|message|>a<|end|><|start|>assistant<|channel|>final<|message|>b<|end|>"
                         "<|start|>user<|message|>c<|end|><|start|>assistant")
    with pytest.raises(UsageError, match="reasoning"):
        harmony.render_prompt([("user", "a")], reasoning="max")
    with pytest.raises(UsageError, match="role"):
        harmony.render_prompt([("system", "a")])


def test_fresh_cache_works_with_the_network_blocked(tmp_path):
    """A new user: empty caches, no network. Harmony and tiktoken both come up from the bundled file."""
    import os
    import subprocess
    import sys

    dead = "http://127.0.0.1:9"
    env = {**os.environ, "EDGEOSS_CACHE_DIR": str(tmp_path / "edgeoss"), "TIKTOKEN_CACHE_DIR": str(tmp_path / "tt"),
           "TIKTOKEN_RS_CACHE_DIR": str(tmp_path / "rs"), "HTTPS_PROXY": dead, "HTTP_PROXY": dead,
           "https_proxy": dead, "http_proxy": dead}
    env.pop("TIKTOKEN_ENCODINGS_BASE", None)
    code = ("from edgeoss.formats import harmony, tokenizer as t; "
            "ids = harmony.render_prompt([('user', 'What is 2+2?')], reasoning='high', date='2025-08-05', "
            "developer='Answer tersely.'); print(len(ids), t.encode('Hello, world!'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "85 [13225, 11, 2375, 0]"
    assert sorted(p.name for p in (tmp_path / "edgeoss").iterdir()) == ["o200k_base.tiktoken"]
    assert not (tmp_path / "tt").exists() and not (tmp_path / "rs").exists()


def test_stop_tokens_match_openai_harmony():
    enc = harmony.harmony_encoding()
    assert set(harmony.STOP_TOKENS) == set(enc.stop_tokens()) == {200002, 200012, 200007}
    assert set(harmony.TURN_STOP_TOKENS) == set(enc.stop_tokens_for_assistant_actions())


COMPLETION = ("<|channel|>analysis<|message|>User asks 2+2. Answer 4.<|end|>"
              "<|start|>assistant<|channel|>final<|message|>4, für sure 🎉<|return|>")


def test_streaming_parser_channels_and_deltas():
    ids = tok.encode(COMPLETION)
    parser = harmony.CompletionParser()
    seen = {"analysis": "", "final": ""}
    channels = []
    for i in ids:
        delta = parser.feed(i)
        if delta:
            seen[delta.channel] += delta.text
        channels.append(parser.channel)
    assert seen == {"analysis": "User asks 2+2. Answer 4.", "final": "4, für sure 🎉"}
    assert "analysis" in channels and channels[-2] == "final" and channels[-1] is None
    assert parser.done and parser.errors == 0
    assert parser.feed(tok.encode("more")[0]) is None  # after <|return|>
    assert parser.messages == [harmony.ParsedMessage("analysis", "User asks 2+2. Answer 4."),
                               harmony.ParsedMessage("final", "4, für sure 🎉")]
    assert parser.final_text() == "4, für sure 🎉"


def test_parse_completion_truncated_anywhere():
    ids = tok.encode(COMPLETION)
    full = {"analysis": "User asks 2+2. Answer 4.", "final": "4, für sure 🎉"}
    for n in range(len(ids) + 1):
        messages = harmony.parse_completion(ids[:n])
        assert all(full[m.channel].startswith(m.text.rstrip("\ufffd")) for m in messages)
        assert all(m.complete for m in messages[:-1])
    cut = harmony.parse_completion(ids[:10])  # inside the analysis
    assert cut == [harmony.ParsedMessage("analysis", "User asks 2+2.", complete=False)]
    head = harmony.parse_completion(ids[:18])  # inside the final message's header
    assert head == [harmony.ParsedMessage("analysis", "User asks 2+2. Answer 4.")]


def test_parser_recovers_from_malformed_output():
    ids = tok.encode("<|channel|>final<|message|>a<|end|>junk text<|start|>assistant<|channel|>final<|message|>b")
    parser = harmony.CompletionParser()
    parser.feed_all(ids)
    assert parser.errors == 1
    assert parser.messages == [harmony.ParsedMessage("final", "a"), harmony.ParsedMessage("final", "b", complete=False)]
    tool = harmony.parse_completion(tok.encode(
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|>"))
    assert tool == [harmony.ParsedMessage("commentary", '{"city": "Paris"}', "functions.get_weather")]


# ---- merges, tokenizer.json, transformers ---------------------------------------------------------------------
def test_merge_pairs_are_valid_bpe_splits():
    pairs = tok.merge_pairs()
    tokens = tok._token_bytes(None)
    assert pairs.shape == (tok.N_RANKS, 2) and pairs.dtype == np.int32 and not pairs.flags.writeable
    single = np.array([len(t) == 1 for t in tokens])
    assert (pairs[single] == -1).all() and (pairs[~single] >= 0).all() and single.sum() == 256
    ranks = np.arange(tok.N_RANKS)
    assert (pairs[~single] < ranks[~single, None]).all()  # built only from earlier tokens
    assert all(tokens[a] + tokens[b] == tokens[r] for r, (a, b) in enumerate(pairs.tolist()) if a >= 0)
    assert tok.byte_level_bpe().merges[:3] == ("Ġ Ġ", "ĠĠ ĠĠ", "i n")


def test_merge_cache_on_disk(tmp_path, monkeypatch):
    expected = tok.merge_pairs()
    monkeypatch.setenv("EDGEOSS_CACHE_DIR", str(tmp_path))
    path = tok._merge_cache_path()
    assert path.parent == tmp_path and tok.O200K_BASE_SHA256[:16] in path.name
    tok._save_merge_pairs(path, expected)
    tokens = tok._token_bytes(None)
    assert (tok._load_merge_pairs(path, tokens) == expected).all()
    swapped = expected.copy()
    swapped[1000] = swapped[1000, ::-1]
    tok._save_merge_pairs(path, swapped)
    assert tok._load_merge_pairs(path, tokens) is None  # pairs that do not spell their token are refused
    path.write_bytes(b"not gzip")
    assert tok._load_merge_pairs(path, tokens) is None
    tok.merge_pairs.cache_clear()
    try:
        start = time.perf_counter()
        assert (tok.merge_pairs() == expected).all()  # derived again, cold
        cold = time.perf_counter() - start
        assert tok._load_merge_pairs(path, tokens) is not None  # and rewritten
        tok.merge_pairs.cache_clear()
        start = time.perf_counter()
        tok.merge_pairs()
        warm = time.perf_counter() - start
        assert warm < cold
    finally:
        tok.merge_pairs.cache_clear()


def test_tokenizers_library_equals_tiktoken(fast_tokenizer):
    hf = fast_tokenizer
    enc = tok.get_encoding()
    assert hf.get_vocab_size() == tok.N_VOCAB
    for text in corpus():
        ids = enc.encode(text, allowed_special=harmony_specials(), disallowed_special=())
        assert hf.encode(text).ids == ids, text[:60]
        assert hf.decode(ids, skip_special_tokens=False) == text
    every_token = list(range(tok.N_VOCAB))
    assert hf.decode(every_token[:tok.N_RANKS]) == enc.decode(every_token[:tok.N_RANKS])
    assert [hf.id_to_token(i) for i in range(tok.N_RANKS, tok.N_VOCAB)] == tok.special_token_names()


def test_endofprompt_is_the_one_difference(fast_tokenizer):
    """tiktoken gives id 200018 two names; a Hugging Face vocabulary holds one per id, harmony's."""
    hf = fast_tokenizer
    enc = tok.get_encoding()
    assert enc.encode("<|reserved_200018|>", allowed_special="all") == hf.encode("<|reserved_200018|>").ids == [200018]
    assert enc.encode("<|endofprompt|>", allowed_special="all") == [200018]
    assert hf.encode("<|endofprompt|>").ids == enc.encode_ordinary("<|endofprompt|>")
    assert hf.decode([200018], skip_special_tokens=False) == harmony.harmony_encoding().decode([200018])


def test_transformers_autotokenizer(hf_folder, hf_tokenizer):
    files = sorted(p.name for p in hf_folder.iterdir())
    assert files == ["chat_template.jinja", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((hf_folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["model_max_length"] == 131072
    hf = hf_tokenizer
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (199998, 200002, 199999)
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == ("<|startoftext|>", "<|return|>", "<|endoftext|>")
    assert len(hf) == tok.N_VOCAB
    enc = tok.get_encoding()
    for text in corpus()[:40]:
        ids = enc.encode(text, allowed_special=harmony_specials(), disallowed_special=())
        assert hf.encode(text, add_special_tokens=True) == ids
        assert hf.decode(ids) == text
    assert hf.decode([200006, 1428, 200008, 3686], skip_special_tokens=True) == "userhi"


def test_write_hf_files_with_other_ids(tmp_path):
    tok.write_hf_tokenizer_files(tmp_path, eos_token_id=200007, pad_token_id=200017, model_max_length=4096)
    special = json.loads((tmp_path / "special_tokens_map.json").read_text())
    assert special == {"bos_token": "<|startoftext|>", "eos_token": "<|end|>", "pad_token": "<|reserved_200017|>"}
    with pytest.raises(TokenizerError, match="eos_token_id 5"):
        tok.write_hf_tokenizer_files(tmp_path, eos_token_id=5)


# ---- the chat template ---------------------------------------------------------------------------------------------
def _harmony_ids(messages, *, training=False):
    import openai_harmony as oh

    conversation = oh.Conversation.from_messages(messages)
    enc = harmony.harmony_encoding()
    if training:
        return enc.render_conversation_for_training(conversation, oh.RenderConversationConfig(auto_drop_analysis=False))
    return enc.render_conversation_for_completion(conversation, oh.Role.ASSISTANT)


def _template_ids(hf_tokenizer, messages, *, generation=True, **kwargs):
    text = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation, **kwargs)
    ids = hf_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False,
                                           add_generation_prompt=generation, **kwargs)
    assert ids == tok.encode(text)
    return ids


def _system(effort, date=None):
    import openai_harmony as oh

    content = oh.SystemContent.new().with_reasoning_effort(oh.ReasoningEffort(effort.capitalize()))
    return oh.Message.from_role_and_content(oh.Role.SYSTEM, content.with_conversation_start_date(date) if date else content)


def test_chat_template_equals_harmony_reference(hf_tokenizer):
    chat = [{"role": "system", "content": "Answer tersely."}, {"role": "user", "content": "What is 2+2?"}]
    ids = _template_ids(hf_tokenizer, chat, reasoning_effort="high", current_date="2025-08-05")
    assert ids == REFERENCE_PROMPT
    today = hf_tokenizer.apply_chat_template(chat[1:], tokenize=False, add_generation_prompt=True)
    assert "\nCurrent date: 20" in today and "Reasoning: medium" in today  # like the published template


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_chat_template_multi_turn(hf_tokenizer, effort):
    import openai_harmony as oh

    m = oh.Message.from_role_and_content
    expected = _harmony_ids([_system(effort), oh.Message.from_role_and_content(
        oh.Role.DEVELOPER, oh.DeveloperContent.new().with_instructions("Be brief.\nVery.")),
        m(oh.Role.USER, "a"), m(oh.Role.ASSISTANT, "b").with_channel("final"), m(oh.Role.USER, "ç 1")])
    chat = [{"role": "developer", "content": "Be brief.\nVery."}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b", "thinking": "dropped"}, {"role": "user", "content": "ç 1"}]
    assert _template_ids(hf_tokenizer, chat, reasoning_effort=effort, current_date=None) == expected
    assert expected == harmony.render_prompt([("user", "a"), ("assistant", "b"), ("user", "ç 1")],
                                             reasoning=effort, developer="Be brief.\nVery.")


def test_chat_template_training_turn(hf_tokenizer):
    import openai_harmony as oh

    m = oh.Message.from_role_and_content
    expected = _harmony_ids([_system("medium", "2025-01-01"), m(oh.Role.USER, "a"),
                             m(oh.Role.ASSISTANT, "think").with_channel("analysis"),
                             m(oh.Role.ASSISTANT, "b").with_channel("final")], training=True)
    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "thinking": "think"}]
    assert _template_ids(hf_tokenizer, chat, generation=False, current_date="2025-01-01") == expected


def test_chat_template_function_tools(hf_tokenizer):
    import openai_harmony as oh

    schema = {"type": "object", "required": ["location"], "properties": {
        "location": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
        "days": {"type": "integer", "default": 3}, "exact": {"type": "boolean", "default": True},
        "tags": {"type": "array", "items": {"type": "string"}}, "any": {"type": "array"},
        "note": {"type": "string", "nullable": True}, "either": {"type": ["string", "null"]},
        "where": {"type": "object", "required": ["x"], "properties": {
            "x": {"type": "string", "default": "q"}, "deep": {"type": "object", "properties": {"z": {"type": "integer"}}}}},
        "choice": {"oneOf": [{"type": "string", "description": "as text"}, {"type": "number"}]}}}
    described = [("get_weather", "Gets the weather.\nIn any city.", schema), ("ping", "No arguments.", None),
                 ("empty", "", {"type": "object", "properties": {}})]
    m = oh.Message.from_role_and_content
    developer = oh.DeveloperContent.new().with_instructions("Be nice.").with_function_tools(
        [oh.ToolDescription.new(name, text, parameters=params) for name, text, params in described])
    call = m(oh.Role.ASSISTANT, '{"location": "Paris"}').with_channel("commentary").with_content_type(
        "<|constrain|>json").with_recipient("functions.get_weather")
    result = oh.Message.from_author_and_content(oh.Author.new(oh.Role.TOOL, "functions.get_weather"),
                                                '{"temp": 20}').with_channel("commentary").with_recipient("assistant")
    history = [_system("low", "2025-01-02"), m(oh.Role.DEVELOPER, developer), m(oh.Role.USER, "Weather in Paris?"),
               m(oh.Role.ASSISTANT, "Need the tool.").with_channel("analysis"), call, result]
    tools = [{"type": "function", "function": {"name": name, "description": text,
                                               **({"parameters": params} if params else {})}}
             for name, text, params in described]
    chat = [{"role": "developer", "content": "Be nice."}, {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "thinking": "Need the tool.",
             "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"location": "Paris"}}}]},
            {"role": "tool", "content": '{"temp": 20}'}]
    kwargs = dict(tools=tools, reasoning_effort="low", current_date="2025-01-02")
    assert _template_ids(hf_tokenizer, chat, **kwargs) == _harmony_ids(history)
    # after a final answer, the analysis before the call is dropped, as harmony does
    more = [m(oh.Role.ASSISTANT, "It is 20C.").with_channel("final"), m(oh.Role.USER, "Thanks")]
    chat_more = chat + [{"role": "assistant", "content": "It is 20C."}, {"role": "user", "content": "Thanks"}]
    assert _template_ids(hf_tokenizer, chat_more, **kwargs) == _harmony_ids(history[:3] + history[4:] + more)


def test_chat_template_is_packaged_data(hf_folder):
    template = tok.chat_template()
    assert (hf_folder / "chat_template.jinja").read_text() == template
    assert "<|start|>" in template and "<|channel|>" in template  # what llama.cpp detects gpt-oss by


# ---- GGUF ----------------------------------------------------------------------------------------------------------
def test_gguf_vocab(hf_folder):
    import gguf

    assert (tok.TOKEN_NORMAL, tok.TOKEN_CONTROL, tok.TOKEN_UNUSED) == (
        gguf.TokenType.NORMAL, gguf.TokenType.CONTROL, gguf.TokenType.UNUSED)
    v = tok.gguf_vocab()
    assert (v.model, v.pre) == ("gpt2", "gpt-4o")
    assert len(v.tokens) == len(v.token_types) == tok.N_VOCAB and len(v.merges) == tok.N_RANKS - 256
    assert v.tokens[220] == "Ġ" and v.tokens[13225] == "Hello" and v.tokens[200006] == "<|start|>"
    assert v.token_types.count(tok.TOKEN_CONTROL) == 1090 and v.token_types[199997] == tok.TOKEN_NORMAL
    model = json.loads((hf_folder / "tokenizer.json").read_text())["model"]
    assert tuple(model["merges"]) == v.merges  # one code path for both formats
    assert all(model["vocab"][t] == i for i, t in enumerate(v.tokens[:1000]))
    padded = tok.gguf_vocab(tok.N_VOCAB + 64)
    assert padded.tokens[tok.N_VOCAB:][:2] == ("[PAD201088]", "[PAD201089]") and len(padded.tokens) == 201152
    assert set(padded.token_types[tok.N_VOCAB:]) == {tok.TOKEN_UNUSED} and padded.merges is v.merges
    with pytest.raises(TokenizerError, match="vocab_size 256 is smaller"):
        tok.gguf_vocab(256)


def test_gguf_vocab_tokenizes_like_tiktoken_in_llama_cpp(tmp_path):
    """llama.cpp, reading only the tokenizer.ggml.* keys written from gguf_vocab(), gives tiktoken's ids."""
    import gguf
    import llama_cpp

    v = tok.gguf_vocab()
    path = tmp_path / "vocab-only.gguf"
    w = gguf.GGUFWriter(str(path), "gpt-oss")
    for add, value in [(w.add_context_length, 4096), (w.add_embedding_length, 64), (w.add_block_count, 1),
                       (w.add_feed_forward_length, 64), (w.add_head_count, 4), (w.add_head_count_kv, 2),
                       (w.add_layer_norm_rms_eps, 1e-5), (w.add_expert_count, 4), (w.add_expert_used_count, 2),
                       (w.add_key_length, 16), (w.add_value_length, 16), (w.add_sliding_window, 8),
                       (w.add_expert_feed_forward_length, 64), (w.add_tokenizer_model, v.model),
                       (w.add_tokenizer_pre, v.pre), (w.add_token_list, v.tokens), (w.add_token_types, v.token_types),
                       (w.add_token_merges, v.merges), (w.add_chat_template, tok.chat_template())]:
        add(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    enc = tok.get_encoding()
    # llama.cpp's own o200k regex splits a few scripts differently from tiktoken (measured with llama-cpp-python
    # 0.3.36: Devanagari "नमस्ते" -> स|्त, Cyrillic "оМ" kept as one piece); the merges are not the cause (BPE
    # of such a piece agrees), so those texts are left out here.
    texts = [t for t in corpus()[:len(TEXTS) + 2] if "नमस्ते" not in t]
    for text in texts:
        expected = enc.encode(text, allowed_special=harmony_specials(), disallowed_special=())
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected, text[:60]
    assert llm.detokenize([200006, 1428, 200008, 3686], special=True) == b"<|start|>user<|message|>hi"
