package org.edgeoss.core;

import java.time.ZoneId;
import java.time.ZonedDateTime;
import java.time.format.DateTimeFormatter;

/**
 * The next turn after the model called a tool: the text to append to the conversation so far (the prompt
 * and what the model generated through {@code <|call|>}) so that the model continues with the result, as
 * openai-harmony renders a tool's message: {@code <|start|>functions.NAME to=assistant<|channel|>commentary
 * <|message|>RESULT<|end|><|start|>assistant}. Appending (rather than re-rendering) keeps the engine's KV cache.
 *
 * <p>{@link #getTime} is the demo app's built-in tool: the current time in a time zone.
 */
public final class ToolTurn {
    private ToolTurn() {
    }

    /** The text that follows a call: the tool's result message, then the assistant's turn header. */
    public static String result(HarmonyStream.ToolCall call, String result) {
        return "<|start|>" + call.recipient + " to=assistant<|channel|>commentary<|message|>" + result
                + "<|end|><|start|>assistant";
    }

    /** The demo's get_time tool (parameters {"tz": IANA zone, default "UTC"}): {"time": ISO-8601} or an error. */
    public static String getTime(HarmonyStream.ToolCall call, ZonedDateTime now) {
        String tz;
        try {
            tz = Json.parseObject(call.arguments.isBlank() ? "{}" : call.arguments, call.recipient).str("tz", "UTC");
        } catch (BundleException e) {
            return "{\"error\": \"arguments are not a JSON object with a string tz\"}";
        }
        try {
            ZonedDateTime there = now.withZoneSameInstant(ZoneId.of(tz));
            return "{\"time\": \"" + there.format(DateTimeFormatter.ISO_OFFSET_DATE_TIME) + "\", \"tz\": \"" + tz + "\"}";
        } catch (java.time.DateTimeException e) {
            return "{\"error\": \"unknown time zone\"}";
        }
    }
}
