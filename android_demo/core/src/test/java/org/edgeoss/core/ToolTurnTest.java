package org.edgeoss.core;

import static org.junit.Assert.assertEquals;

import java.time.ZoneOffset;
import java.time.ZonedDateTime;
import org.junit.Test;

public class ToolTurnTest {
    private static final ZonedDateTime NOW = ZonedDateTime.of(2026, 12, 7, 12, 0, 0, 0, ZoneOffset.UTC);

    // openai-harmony's rendering of get_time's result message and the next assistant header (tests/test_tools.py
    // checks it)
    static final String RESULT = "<|start|>functions.get_time to=assistant<|channel|>commentary<|message|>"
            + "{\"time\": \"2026-12-07T13:00:00+01:00\", \"tz\": \"Europe/Paris\"}<|end|><|start|>assistant";

    private static HarmonyStream.ToolCall called(String arguments) {
        HarmonyStream s = new HarmonyStream();
        s.feed("<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>" + arguments + "<|call|>");
        return s.toolCalls().get(0);
    }

    @Test
    public void theDemoToolAnswersAndItsResultIsTheNextTurn() {
        HarmonyStream.ToolCall call = called("{\"tz\": \"Europe/Paris\"}");
        String answer = ToolTurn.getTime(call, NOW);
        assertEquals("{\"time\": \"2026-12-07T13:00:00+01:00\", \"tz\": \"Europe/Paris\"}", answer);
        assertEquals(RESULT, ToolTurn.result(call, answer));
    }

    @Test
    public void badArgumentsGetAnErrorResultNotACrash() {
        assertEquals("{\"time\": \"2026-12-07T12:00:00Z\", \"tz\": \"UTC\"}", ToolTurn.getTime(called(""), NOW));
        assertEquals("{\"error\": \"unknown time zone\"}", ToolTurn.getTime(called("{\"tz\": \"Mars/Base\"}"), NOW));
        assertEquals("{\"error\": \"arguments are not a JSON object with a string tz\"}",
                ToolTurn.getTime(called("{\"tz\": "), NOW));
    }
}
