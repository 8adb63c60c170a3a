package org.edgeoss.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Splits gpt-oss output, fed as it streams, into harmony channels. The stream starts right after the
 * prompt's {@code <|start|>assistant}, e.g.
 * {@code <|channel|>analysis<|message|>...<|end|><|start|>assistant<|channel|>final<|message|>...<|return|>}.
 *
 * <p>Chunks may cut special tokens anywhere; a held-back partial token waits for the next chunk.
 * Truncated output keeps whatever content arrived. Generation is complete after {@code <|return|>},
 * {@code <|call|>}, or an {@code <|end|>} that closes a final-channel message; an {@code <|end|>} after
 * analysis is not the end (the model goes on with the final channel).
 *
 * <p>Tool calls: a message whose header names a recipient ({@code to=functions.NAME}, before or after the
 * channel) is a call; its content is the arguments (JSON text). {@link #toolCalls()} lists the calls whose
 * {@code <|call|>} arrived, {@link #pendingCall()} the one being written.
 */
public final class HarmonyStream {
    /** A tool call: the recipient ("functions.get_time") and its arguments as the model wrote them. */
    public static final class ToolCall {
        public final String recipient;
        public final String arguments;

        ToolCall(String recipient, String arguments) {
            this.recipient = recipient;
            this.arguments = arguments;
        }

        /** The function's name: the recipient without its "functions." namespace. */
        public String name() {
            int dot = recipient.indexOf('.');
            return dot >= 0 ? recipient.substring(dot + 1) : recipient;
        }
    }

    private static final Pattern RECIPIENT = Pattern.compile("to=([^\\s<]+)");
    private static final String START = "<|start|>";
    private static final String END = "<|end|>";
    private static final String MESSAGE = "<|message|>";
    private static final String CHANNEL = "<|channel|>";
    private static final String CONSTRAIN = "<|constrain|>";
    private static final String RETURN = "<|return|>";
    private static final String CALL = "<|call|>";
    private static final String[] SPECIALS = {START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL};

    private enum State { HEADER, CONTENT, BETWEEN, DONE }

    private State state = State.HEADER;
    private final StringBuilder pending = new StringBuilder();
    private final StringBuilder header = new StringBuilder();
    private final Map<String, StringBuilder> channels = new LinkedHashMap<>();
    private final List<ToolCall> calls = new ArrayList<>();
    private final StringBuilder message = new StringBuilder();
    private String channel;
    private String recipient;

    /** Feeds the next piece of decoded output text. Text after completion is ignored. */
    public void feed(String text) {
        if (state == State.DONE) return;
        pending.append(text);
        consume(false);
    }

    /** Ends the stream (e.g. when it was cut short): a held-back partial token counts as plain text. */
    public void finish() {
        consume(true);
    }

    public boolean isComplete() {
        return state == State.DONE;
    }

    /** The channel being written now, or null between messages. */
    public String currentChannel() {
        return state == State.CONTENT ? channel : null;
    }

    public String analysis() {
        return channel("analysis");
    }

    public String finalText() {
        return channel("final");
    }

    /** The tool calls completed so far (ended by {@code <|call|>}), in order. */
    public List<ToolCall> toolCalls() {
        return Collections.unmodifiableList(calls);
    }

    /** The call being written (arguments so far), or null. */
    public ToolCall pendingCall() {
        return state == State.CONTENT && recipient != null ? new ToolCall(recipient, message.toString()) : null;
    }

    public String channel(String name) {
        StringBuilder sb = channels.get(name);
        return sb == null ? "" : sb.toString();
    }

    private void consume(boolean atEnd) {
        while (state != State.DONE && pending.length() > 0) {
            int at = pending.indexOf("<|");
            if (at < 0) {
                boolean holdLt = !atEnd && pending.charAt(pending.length() - 1) == '<';
                int n = pending.length() - (holdLt ? 1 : 0);
                text(pending.substring(0, n));
                pending.delete(0, n);
                return;
            }
            text(pending.substring(0, at));
            pending.delete(0, at);
            String token = tokenAtStart();
            if (token != null) {
                pending.delete(0, token.length());
                special(token);
            } else if (!atEnd && couldBecomeToken()) {
                return;
            } else {
                text("<|");
                pending.delete(0, 2);
            }
        }
    }

    private String tokenAtStart() {
        for (String s : SPECIALS) {
            if (pending.length() >= s.length() && pending.substring(0, s.length()).equals(s)) return s;
        }
        return null;
    }

    private boolean couldBecomeToken() {
        String p = pending.toString();
        for (String s : SPECIALS) {
            if (p.length() < s.length() && s.startsWith(p)) return true;
        }
        return false;
    }

    private void text(String s) {
        if (s.isEmpty()) return;
        if (state == State.HEADER) header.append(s);
        else if (state == State.CONTENT) {
            channels.get(channel).append(s);
            message.append(s);
        }
        // text between <|end|> and <|start|> is not part of any message
    }

    private void special(String token) {
        if (token.equals(RETURN) || token.equals(CALL)) {
            if (token.equals(CALL) && state == State.CONTENT && recipient != null) {
                calls.add(new ToolCall(recipient, message.toString()));
            }
            state = State.DONE;
            return;
        }
        switch (state) {
            case HEADER:
                if (token.equals(MESSAGE)) {
                    openMessage();
                } else if (token.equals(END)) {
                    state = State.BETWEEN;
                } else {
                    header.append(token);
                }
                break;
            case CONTENT:
                if (token.equals(END)) {
                    state = channel.equals("final") ? State.DONE : State.BETWEEN;
                } else if (token.equals(START)) {
                    header.setLength(0);
                    state = State.HEADER;
                } else {
                    channels.get(channel).append(token);
                    message.append(token);
                }
                break;
            case BETWEEN:
                if (token.equals(START)) {
                    header.setLength(0);
                    state = State.HEADER;
                }
                break;
        }
    }

    /** The header (e.g. "assistant<|channel|>analysis") is complete: start its message. */
    private void openMessage() {
        String h = header.toString();
        header.setLength(0);
        Matcher to = RECIPIENT.matcher(h);
        recipient = to.find() ? to.group(1) : null;
        message.setLength(0);
        String name = "";
        int at = h.indexOf(CHANNEL);
        if (at >= 0) {
            String rest = h.substring(at + CHANNEL.length());
            int stop = rest.indexOf("<|");
            name = (stop >= 0 ? rest.substring(0, stop) : rest).trim().split("\\s+")[0];
        }
        channel = name.isEmpty() ? "final" : name;
        StringBuilder sb = channels.computeIfAbsent(channel, k -> new StringBuilder());
        if (sb.length() > 0) sb.append("\n\n");
        state = State.CONTENT;
    }
}
