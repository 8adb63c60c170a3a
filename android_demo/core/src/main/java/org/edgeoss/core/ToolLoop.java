package org.edgeoss.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * The app's conversation with function tools, as text: the prompt, then for each round the model's output and,
 * when it ends in a call, the tool's result ({@link ToolTurn#result}), until the model answers. Each round's
 * prompt extends the last one, so an engine that keeps its KV cache's common prefix computes only the new tokens.
 *
 * <pre>
 *   ToolLoop loop = new ToolLoop(prompt, Map.of("get_time", call -> ToolTurn.getTime(call, now)), 4);
 *   do {
 *       engine.generate(loop.prompt(), piece -> { loop.feed(piece); return !loop.stream().isComplete(); });
 *   } while (loop.endRound() == ToolLoop.Outcome.CALL_ANSWERED);
 * </pre>
 *
 * A call to a function the app has no handler for is answered with an error result (the model sees it), never
 * a crash. After {@code maxRounds} answered calls, a further call ends the loop unanswered.
 */
public final class ToolLoop {
    /** Answers one call with the result text the model reads (JSON by convention). */
    public interface Handler {
        String answer(HarmonyStream.ToolCall call);
    }

    /** How a round ended. */
    public enum Outcome {
        /** A call was answered: generate again from {@link #prompt()}. */
        CALL_ANSWERED,
        /** The model wrote its answer (or stopped without a call). */
        ANSWER,
        /** The model called a tool again after the last allowed round: the call is left unanswered. */
        MAX_ROUNDS,
    }

    /** One answered call, for the app to show. */
    public static final class Exchange {
        public final HarmonyStream.ToolCall call;
        public final String result;

        Exchange(HarmonyStream.ToolCall call, String result) {
            this.call = call;
            this.result = result;
        }
    }

    private final StringBuilder conversation;
    private final Map<String, Handler> handlers;
    private final int maxRounds;
    private final List<Exchange> exchanges = new ArrayList<>();
    private final StringBuilder output = new StringBuilder();
    private HarmonyStream stream = new HarmonyStream();

    /**
     * @param prompt   the rendered conversation, ending in {@code <|start|>assistant} ({@link HarmonyPrompt})
     * @param handlers by function name (the recipient without "functions.")
     */
    public ToolLoop(String prompt, Map<String, Handler> handlers, int maxRounds) {
        if (maxRounds < 0) throw new IllegalArgumentException("maxRounds must not be negative");
        this.conversation = new StringBuilder(prompt);
        this.handlers = handlers;
        this.maxRounds = maxRounds;
    }

    /** The text to generate from this round: the prompt and every earlier round's output and result. */
    public String prompt() {
        return conversation.toString();
    }

    /** This round's parse of the model's output. */
    public HarmonyStream stream() {
        return stream;
    }

    /** Feeds the next piece of this round's decoded output. Text after the round is complete is ignored. */
    public void feed(String text) {
        if (stream.isComplete()) return;
        stream.feed(text);
        output.append(text);
    }

    /** The calls answered so far, in order. */
    public List<Exchange> exchanges() {
        return Collections.unmodifiableList(exchanges);
    }

    /**
     * Ends the round (generation stopped): a call is answered and its result appended, ready for the next round;
     * otherwise the loop is over. The next round's {@link #stream()} starts empty.
     */
    public Outcome endRound() {
        stream.finish();
        List<HarmonyStream.ToolCall> calls = stream.toolCalls();
        if (calls.isEmpty()) return Outcome.ANSWER;
        if (exchanges.size() == maxRounds) return Outcome.MAX_ROUNDS;
        HarmonyStream.ToolCall call = calls.get(calls.size() - 1);
        Handler handler = handlers.get(call.name());
        String result = handler != null ? handler.answer(call)
                : "{\"error\": " + Json.quote("this app has no tool named " + call.name()) + "}";
        exchanges.add(new Exchange(call, result));
        conversation.append(output).append(ToolTurn.result(call, result));
        output.setLength(0);
        stream = new HarmonyStream();
        return Outcome.CALL_ANSWERED;
    }
}
