"""`edgeoss run` (chat one prompt through an engine) and `edgeoss logits` (per-position logits to .npy)."""

from __future__ import annotations

import codecs
from pathlib import Path

import click
from rich.table import Table

from ..errors import UsageError
from ._common import err, out

CHANNEL_STYLES = {"analysis": "dim italic", "commentary": "cyan", "final": "bold"}


def _engine_options(engine: str, budget: str | None, plan: Path | None, trace: bool,
                    emulate: tuple[str, ...]) -> dict:
    """Options for load_engine. Expert budgets and plans exist in the reference engine and in llama.cpp (its
    expert store); traces and emulations in the reference engine only."""
    from ..units import parse_size

    if engine != "reference":
        allowed = ("--memory-budget", "--plan") if engine == "llamacpp" else ()
        for flag, value in (("--memory-budget", budget), ("--plan", plan), ("--trace", trace), ("--emulate", emulate)):
            if value and flag not in allowed:
                engines = "the reference and llamacpp engines" if flag in ("--memory-budget", "--plan") else \
                    "the reference engine"
                verb = "supports" if flag in ("--trace", "--emulate") else "support"
                raise UsageError(f"{flag}: only {engines} {verb} this")
        if budget is None and plan is None:
            return {}
        return {"memory_budget": parse_size(budget) if budget is not None else None, "plan": plan}
    from ..runtimes.reference import Emulation

    return {"memory_budget": parse_size(budget) if budget is not None else None, "plan": plan,
            "trace": trace, "emulation": Emulation.named(emulate)}


emulate_option = click.option("--emulate", multiple=True, metavar="NAME",
                              help="reference engine: reproduce another engine's numerics "
                                   "(ggml_yarn_rounding, q8_activations, or llamacpp for both)")


# ---- run ---------------------------------------------------------------------------------------------------
@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="the user message")
@click.option("--system", help="instructions for the model (harmony's developer message)")
@click.option("--reasoning", type=click.Choice(["low", "medium", "high"]), default="medium", show_default=True)
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True, help="0 = greedy")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--memory-budget", "budget", metavar="SIZE",
              help="reference, llamacpp: bytes of experts held in RAM, e.g. 6GiB; the rest stream from the file "
                   "(default: all, mapped)")
@click.option("--plan", type=click.Path(path_type=Path),
              help="reference, llamacpp: plan.json naming experts to pin (its budget_bytes applies unless "
                   "--memory-budget is given)")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path), help="write the routing trace (.npz)")
@click.option("--engine", default="reference", show_default=True,
              help="reference | llamacpp | onnxruntime | ortgenai (the artifact must suit it)")
@emulate_option
@click.option("--memory-limit", metavar="SIZE", help="run inside a fresh memory cgroup of this size (page cache "
                                                    "charged); an out-of-memory kill is reported, not raised")
@click.option("--tools", "tools_path", type=click.Path(path_type=Path),
              help="a JSON list of function tools ({name, description, parameters} or OpenAI's {type: function, "
                   "function: {...}}): declared to the model; its calls are shown")
@click.option("--tool-command", metavar="CMD",
              help="with --tools: run CMD for each call, the call as JSON {name, arguments} on its stdin, its stdout "
                   "the result; the conversation goes on to the model's answer")
@click.option("--max-tool-rounds", type=int, default=4, show_default=True, help="with --tool-command: calls at most")
@click.option("--force", "forced", multiple=True, metavar="TEXT",
              help="make the model write TEXT (harmony, after <|start|>assistant) first, one --force per round: "
                   "exercises the tool loop on random weights")
@click.option("--json", "as_json", is_flag=True, help="with --tools: print the whole conversation as JSON")
def run(artifact: Path, prompt: str, system: str | None, reasoning: str, max_new_tokens: int, temperature: float,
        top_p: float, seed: int, budget: str | None, plan: Path | None, trace_path: Path | None, engine: str,
        emulate: tuple[str, ...], memory_limit: str | None, tools_path: Path | None, tool_command: str | None,
        max_tool_rounds: int, forced: tuple[str, ...], as_json: bool) -> None:
    """Chat one prompt: render harmony, stream the reply by channel, then print speed and cache statistics. With
    --tools, the model may call the tools; with --tool-command their results go back to it."""
    if memory_limit:
        _run_limited(memory_limit)
        return
    if tools_path is None and (tool_command or forced or as_json):
        raise UsageError("--tool-command, --force and --json go with --tools")
    if tools_path is not None:
        from .run_tools import run_with_tools

        run_with_tools(artifact, engine, _engine_options(engine, budget, plan, False, emulate), prompt, system,
                       reasoning, max_new_tokens, (temperature, top_p, seed), tools_path, tool_command,
                       max_tool_rounds, forced, as_json)
        return
    from ..formats.harmony import STOP_TOKENS, CompletionParser, render_prompt
    from ..runtimes.engine import load_engine
    from ..runtimes.generate import Sampling, generate
    from ..formats.tokenizer import get_encoding

    options = _engine_options(engine, budget, plan, trace_path is not None, emulate)
    sampling = Sampling(temperature=temperature, top_p=top_p, seed=seed)
    ids = render_prompt([("user", prompt)], reasoning=reasoning, developer=system)
    err.print(f"loading {artifact} in the {engine} engine ...", highlight=False, soft_wrap=True)
    model = load_engine(engine, artifact, **options)
    try:
        err.print(f"prompt: {len(ids)} tokens (harmony, reasoning {reasoning}); generating up to "
                  f"{max_new_tokens} tokens", highlight=False)
        stream = _Stream(CompletionParser(), get_encoding())
        result = generate(model, ids, max_new_tokens, sampling, STOP_TOKENS, on_token=stream.token)
        stream.finish()
        _print_summary(result, stream.parser, model.stats())
        if trace_path is not None:
            from ..formats.routing_trace import write_trace

            trace = model.routing_trace()
            trace.meta.update(prompt_tokens=len(ids), sampling=vars(sampling))
            write_trace(trace_path, trace)
            err.print(f"wrote routing trace {trace_path} ({trace.num_tokens} tokens x {trace.num_layers} layers "
                      f"x top-{trace.top_k})", highlight=False)
    finally:
        model.close()


class _Stream:
    """Prints each generated token as it comes: message text under its channel's heading, and everything
    else the harmony parser does not turn into text (headers, stray tokens) dimmed, as raw text."""

    def __init__(self, parser, encoding):
        self.parser, self.encoding = parser, encoding
        self.raw = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.channel: str | None = None

    def token(self, token: int, parsed: bool = False) -> None:
        """Show a token; `parsed`: the parser has been fed it already (by edgeoss.runtimes.chat)."""
        delta = self.parser.last_delta if parsed else self.parser.feed(token)
        if delta is None:
            self._write(self.raw.decode(self.encoding.decode_single_token_bytes(token)), "dim")
            return
        self.raw.reset()
        if delta.channel != self.channel:
            self.channel = delta.channel
            out.print(f"\n── {self.channel or 'message'} ──", style="magenta", highlight=False)
        self._write(delta.text, CHANNEL_STYLES.get(self.channel or "", ""))

    def finish(self) -> None:
        self._write(self.raw.decode(b"", final=True), "dim")
        out.print()

    @staticmethod
    def _write(text: str, style: str) -> None:
        if text:
            out.print(text, style=style, end="", markup=False, highlight=False, soft_wrap=True)


def _print_summary(result, parser, stats: dict) -> None:
    from ..formats.tokenizer import SPECIAL
    from ..units import human

    names = SPECIAL.names()
    table = Table(title="generation", show_header=False)
    table.add_row("prefill", f"{result.prompt_tokens} tokens in {result.prefill_seconds:.2f} s = "
                             f"{result.prefill_tokens_per_second:.1f} tok/s")
    table.add_row("decode", f"{result.decode_steps} steps in {result.decode_seconds:.2f} s = "
                            f"{result.decode_tokens_per_second:.2f} tok/s")
    stop = names.get(result.stop_token, str(result.stop_token)) if result.stop_token is not None else \
        "max new tokens reached"
    table.add_row("generated", f"{len(result.tokens)} tokens, stopped by {stop}")
    messages = [m for m in parser.messages if m.text]
    table.add_row("harmony messages", ", ".join(f"{m.channel or 'no channel'} ({len(m.text)} chars"
                                                f"{'' if m.complete else ', unfinished'})" for m in messages)
                  or "none (the model wrote no well-formed message)")
    experts = stats.get("experts")
    if experts:
        budget = human(experts["budget_bytes"]) if experts["budget_bytes"] else "none (all experts mapped)"
        table.add_row("expert cache", f"budget {budget}; {experts['hits']} hits, {experts['misses']} misses "
                                      f"(hit rate {100 * experts['hit_rate']:.1f} %); pinned "
                                      f"{experts['pinned_experts']} ({human(experts['pinned_bytes'])})")
        table.add_row("expert bytes", f"read {human(experts['bytes_read'])}; decode "
                                      f"{human(stats['decode_bytes_read_per_token'])}/token; resident "
                                      f"{human(experts['resident_bytes'])}, peak {human(experts['peak_bytes'])}")
    out.print(table)


# ---- logits ------------------------------------------------------------------------------------------------
def _parse_tokens(text: str) -> list[int]:
    try:
        tokens = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise UsageError(f"--tokens {text!r}: expected comma-separated integers, e.g. 1,2,3") from None
    if not tokens:
        raise UsageError("--tokens: no token ids given")
    return tokens


def _run_limited(limit: str) -> None:
    """This same command, without --memory-limit, in a child process inside a memory cgroup of that size."""
    import sys

    from ..validate.memlimit import run_limited
    from ..units import human, parse_size

    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg == "--memory-limit":
            skip = not skip and arg == "--memory-limit"
            continue
        if not arg.startswith("--memory-limit="):
            argv.append(arg)
    result = run_limited([sys.executable, "-m", "edgeoss", *argv], parse_size(limit))
    click.echo(result.stdout, nl=False)
    err.print(result.stderr.rstrip(), highlight=False, markup=False)
    verdict = "killed by the out-of-memory killer" if result.killed else \
        "timed out" if result.timed_out else "fits" if result.ok else f"failed (exit {result.returncode})"
    err.print(f"inside a {human(result.limit_bytes)} memory cgroup: {verdict}; peak {human(result.peak_bytes)}, "
              f"read {human(result.read_bytes)} from disk, {result.major_faults} major faults", highlight=False)


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--engine", default="reference", show_default=True,
              help="reference | llamacpp | onnxruntime | ortgenai (the artifact must suit it)")
@click.option("--tokens", "token_list", metavar="1,2,3", help="token ids")
@click.option("--text", help="text, tokenized with o200k_harmony")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="where to write (.npy)")
@click.option("--chunk", type=int, help="prefill in chunks of this many tokens (default: one batch)")
@click.option("--memory-budget", "budget", metavar="SIZE", help="reference, llamacpp: bytes of experts held in RAM")
@click.option("--plan", type=click.Path(path_type=Path), help="reference, llamacpp: plan.json naming experts to pin")
@emulate_option
def logits(artifact: Path, engine: str, token_list: str | None, text: str | None, out_path: Path,
           chunk: int | None, budget: str | None, plan: Path | None, emulate: tuple[str, ...]) -> None:
    """Write float32 logits [T, vocab], one row per position, computed by an engine from a fresh sequence."""
    import time

    import numpy as np

    from ..atomic import atomic_file
    from ..runtimes.engine import all_logits, load_engine
    from ..formats.tokenizer import encode

    if (token_list is None) == (text is None):
        raise UsageError("give exactly one of --tokens or --text")
    tokens = _parse_tokens(token_list) if token_list is not None else encode(text)
    options = _engine_options(engine, budget, plan, False, emulate)
    model = load_engine(engine, artifact, **options)
    try:
        start = time.perf_counter()
        values = np.asarray(all_logits(model, tokens, chunk=chunk), dtype=np.float32)
        took = time.perf_counter() - start
    finally:
        model.close()
    with atomic_file(out_path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, values)
    err.print(f"wrote {out_path}: float32 {list(values.shape)} from {engine} in {took:.2f} s", highlight=False)


COMMANDS = [run, logits]
