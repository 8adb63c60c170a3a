package org.edgeoss.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.time.ZoneOffset;
import java.time.ZonedDateTime;
import java.util.Map;
import org.junit.Test;

public class ToolLoopTest {
    private static final ZonedDateTime NOW = ZonedDateTime.of(2026, 12, 7, 12, 0, 0, 0, ZoneOffset.UTC);
    private static final Map<String, ToolLoop.Handler> HANDLERS = Map.of("get_time", c -> ToolTurn.getTime(c, NOW));

    // The model's first round after HarmonyPromptTest.WITH_TOOLS: analysis, then a call, as openai-harmony
    // renders them (tests/test_tools.py checks the constants below)
    static final String ROUND_ONE = "<|channel|>analysis<|message|>Need the time.<|end|>"
            + "<|start|>assistant to=functions.get_time<|channel|>commentary <|constrain|>json<|message|>"
            + "{\"tz\": \"Europe/Paris\"}<|call|>";
    // The conversation after the call was answered, up to the next assistant header: openai-harmony's
    // render_conversation_for_completion of the prompt's messages, the analysis, the call and the tool's result
    static final String AFTER_CALL = "<|channel|>analysis<|message|>Need the time.<|end|>"
            + "<|start|>assistant to=functions.get_time<|channel|>commentary <|constrain|>json<|message|>"
            + "{\"tz\": \"Europe/Paris\"}<|call|>"
            + "<|start|>functions.get_time to=assistant<|channel|>commentary<|message|>"
            + "{\"time\": \"2026-12-07T13:00:00+01:00\", \"tz\": \"Europe/Paris\"}<|end|><|start|>assistant";
    private static final String ANSWER = "<|channel|>final<|message|>It is 13:00 in Paris.<|return|>";

    private static void feedInChunks(ToolLoop loop, String text, int size) {
        for (int i = 0; i < text.length(); i += size) loop.feed(text.substring(i, Math.min(text.length(), i + size)));
    }

    @Test
    public void aCallIsAnsweredAndTheNextPromptExtendsTheLast() {
        for (int size = 1; size <= 9; size++) {
            ToolLoop loop = new ToolLoop(HarmonyPromptTest.WITH_TOOLS, HANDLERS, 4);
            feedInChunks(loop, ROUND_ONE, size);
            assertTrue(loop.stream().isComplete());
            assertEquals(ToolLoop.Outcome.CALL_ANSWERED, loop.endRound());
            assertEquals(HarmonyPromptTest.WITH_TOOLS + AFTER_CALL, loop.prompt());
            assertEquals(1, loop.exchanges().size());
            assertEquals("functions.get_time", loop.exchanges().get(0).call.recipient);
            assertEquals("{\"time\": \"2026-12-07T13:00:00+01:00\", \"tz\": \"Europe/Paris\"}",
                    loop.exchanges().get(0).result);
            assertEquals("", loop.stream().analysis()); // the next round starts a fresh parse
            feedInChunks(loop, ANSWER + "ignored after the end", size);
            assertEquals(ToolLoop.Outcome.ANSWER, loop.endRound());
            assertEquals("It is 13:00 in Paris.", loop.stream().finalText());
            assertEquals(HarmonyPromptTest.WITH_TOOLS + AFTER_CALL, loop.prompt());
        }
    }

    @Test
    public void anUnknownToolGetsAnErrorResultAndRoundsAreBounded() {
        ToolLoop loop = new ToolLoop("P<|start|>assistant", HANDLERS, 1);
        loop.feed("<|channel|>commentary to=functions.send_\"sms\" <|constrain|>json<|message|>{}<|call|>");
        assertEquals(ToolLoop.Outcome.CALL_ANSWERED, loop.endRound());
        assertEquals("{\"error\": \"this app has no tool named send_\\\"sms\\\"\"}", loop.exchanges().get(0).result);
        assertTrue(loop.prompt().endsWith("<|message|>{\"error\": \"this app has no tool named send_\\\"sms\\\"\"}"
                + "<|end|><|start|>assistant"));
        String before = loop.prompt();
        loop.feed("<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{}<|call|>");
        assertEquals(ToolLoop.Outcome.MAX_ROUNDS, loop.endRound());
        assertEquals(before, loop.prompt());
        assertEquals(1, loop.exchanges().size());
    }

    @Test
    public void outputCutShortWithoutACallIsTheEnd() {
        ToolLoop loop = new ToolLoop("P<|start|>assistant", HANDLERS, 4);
        loop.feed("<|channel|>analysis<|message|>Thinking about <|");
        assertEquals(ToolLoop.Outcome.ANSWER, loop.endRound());
        assertEquals("Thinking about <|", loop.stream().analysis());
    }
}
