package org.edgeoss.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;

import org.junit.Test;

public class HarmonyStreamTest {
    private static final String FULL = "<|channel|>analysis<|message|>User asks 2+2. Answer 4.<|end|>"
            + "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>";

    private static HarmonyStream fed(String... chunks) {
        HarmonyStream s = new HarmonyStream();
        for (String c : chunks) s.feed(c);
        return s;
    }

    @Test
    public void splitsAnalysisAndFinal() {
        HarmonyStream s = fed(FULL);
        assertEquals("User asks 2+2. Answer 4.", s.analysis());
        assertEquals("2 + 2 = 4.", s.finalText());
        assertTrue(s.isComplete());
        assertNull(s.currentChannel());
    }

    @Test
    public void anyChunkingGivesTheSameResult() {
        for (int size = 1; size <= 12; size++) {
            HarmonyStream s = new HarmonyStream();
            for (int i = 0; i < FULL.length(); i += size) s.feed(FULL.substring(i, Math.min(FULL.length(), i + size)));
            assertEquals("chunk " + size, "User asks 2+2. Answer 4.", s.analysis());
            assertEquals("chunk " + size, "2 + 2 = 4.", s.finalText());
            assertTrue("chunk " + size, s.isComplete());
        }
    }

    @Test
    public void truncatedOutputKeepsWhatArrived() {
        HarmonyStream s = fed("<|channel|>analysis<|message|>Let me th");
        assertEquals("Let me th", s.analysis());
        assertEquals("", s.finalText());
        assertEquals("analysis", s.currentChannel());
        assertFalse(s.isComplete());

        s = fed("<|channel|>analysis<|message|>Done.<|end|><|start|>assistant<|channel|>fin");
        assertEquals("Done.", s.analysis());
        assertEquals("", s.finalText());
        assertNull(s.currentChannel());
        assertFalse(s.isComplete());
    }

    @Test
    public void partialTokenWaitsThenFinishFlushesIt() {
        HarmonyStream s = fed("<|channel|>final<|message|>Hmm<|en");
        assertEquals("Hmm", s.finalText());
        s.finish();
        assertEquals("Hmm<|en", s.finalText());
        assertFalse(s.isComplete());
    }

    @Test
    public void endClosesGenerationOnlyAfterFinal() {
        HarmonyStream s = fed("<|channel|>analysis<|message|>think<|end|>");
        assertFalse(s.isComplete());
        s.feed("<|start|>assistant<|channel|>final<|message|>answer<|end|>");
        assertTrue(s.isComplete());
        s.feed("<|start|>assistant<|channel|>final<|message|>ignored");
        assertEquals("answer", s.finalText());
    }

    @Test
    public void callEndsAToolCallOnCommentary() {
        HarmonyStream s = fed("<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
                + "{\"city\":\"Paris\"}<|call|>");
        assertEquals("{\"city\":\"Paris\"}", s.channel("commentary"));
        assertTrue(s.isComplete());
    }

    @Test
    public void literalAngleBarTextStaysContent() {
        HarmonyStream s = fed("<|channel|>final<|message|>a <|b|> c <", "| d 1 <", " 2<|return|>");
        assertEquals("a <|b|> c <| d 1 < 2", s.finalText());
    }

    @Test
    public void messageWithoutChannelCountsAsFinal() {
        HarmonyStream s = fed("<|message|>plain", "<|end|>");
        assertEquals("plain", s.finalText());
        assertTrue(s.isComplete());
    }

    @Test
    public void repeatedChannelMessagesAreSeparated() {
        HarmonyStream s = fed("<|channel|>analysis<|message|>one<|end|>",
                "<|start|>assistant<|channel|>analysis<|message|>two<|end|>");
        assertEquals("one\n\ntwo", s.analysis());
        assertFalse(s.isComplete());
    }

    // openai-harmony's rendering of an analysis message and a call (tests/test_tools.py renders the same), after
    // the prompt's <|start|>assistant
    private static final String CALL = "<|channel|>analysis<|message|>Need the time.<|end|>"
            + "<|start|>assistant to=functions.get_time<|channel|>commentary <|constrain|>json<|message|>"
            + "{\"fmt\": \"iso\", \"tz\": \"Europe/Paris\"}<|call|>";

    @Test
    public void reportsAToolCallWhateverTheChunking() {
        for (int size = 1; size <= CALL.length(); size++) {
            HarmonyStream s = new HarmonyStream();
            for (int i = 0; i < CALL.length(); i += size) s.feed(CALL.substring(i, Math.min(CALL.length(), i + size)));
            assertTrue("chunk " + size, s.isComplete());
            assertEquals("chunk " + size, 1, s.toolCalls().size());
            HarmonyStream.ToolCall call = s.toolCalls().get(0);
            assertEquals("functions.get_time", call.recipient);
            assertEquals("get_time", call.name());
            assertEquals("{\"fmt\": \"iso\", \"tz\": \"Europe/Paris\"}", call.arguments);
            assertEquals("Need the time.", s.analysis());
            assertEquals("", s.finalText());
        }
    }

    @Test
    public void aCallBeingWrittenIsPendingAndTheRecipientMayFollowTheChannel() {
        HarmonyStream s = fed("<|channel|>commentary to=functions.create_event <|constrain|>json<|message|>{\"title\": \"Den");
        HarmonyStream.ToolCall pending = s.pendingCall();
        assertEquals("functions.create_event", pending.recipient);
        assertEquals("{\"title\": \"Den", pending.arguments);
        assertTrue(s.toolCalls().isEmpty());
        s.feed("tist\"}<|call|>");
        assertEquals("{\"title\": \"Dentist\"}", s.toolCalls().get(0).arguments);
        assertNull(s.pendingCall());
    }

    @Test
    public void anAnswerIsNoCall() {
        HarmonyStream s = fed(FULL);
        assertTrue(s.toolCalls().isEmpty());
        assertNull(s.pendingCall());
    }
}
