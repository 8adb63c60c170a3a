package org.edgeoss.core;

import static org.junit.Assert.assertEquals;

import java.time.LocalDate;
import org.junit.Test;

/** Expected texts are openai-harmony 0.0.8's render_conversation_for_completion output, decoded. */
public class HarmonyPromptTest {
    private static final LocalDate DATE = LocalDate.of(2025, 1, 31);
    private static final String SYSTEM_HEAD = "<|start|>system<|message|>You are ChatGPT, a large language model "
            + "trained by OpenAI.\nKnowledge cutoff: 2024-06\nCurrent date: 2025-01-31\n\nReasoning: ";
    private static final String SYSTEM_TAIL = "\n\n# Valid channels: analysis, commentary, final. "
            + "Channel must be included for every message.<|end|>";

    @Test
    public void withDeveloperInstructions() {
        assertEquals(SYSTEM_HEAD + "high" + SYSTEM_TAIL
                        + "<|start|>developer<|message|># Instructions\n\nAnswer briefly.<|end|>"
                        + "<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant",
                HarmonyPrompt.render(ReasoningEffort.HIGH, DATE, "Answer briefly.", "What is 2+2?"));
    }

    @Test
    public void withoutInstructionsThereIsNoDeveloperMessage() {
        String expected = SYSTEM_HEAD + "low" + SYSTEM_TAIL + "<|start|>user<|message|>Hi<|end|><|start|>assistant";
        assertEquals(expected, HarmonyPrompt.render(ReasoningEffort.LOW, DATE, null, "Hi"));
        assertEquals(expected, HarmonyPrompt.render(ReasoningEffort.LOW, DATE, "", "Hi"));
    }

    @Test
    public void effortNames() {
        assertEquals("medium", ReasoningEffort.MEDIUM.wireName());
        assertEquals(SYSTEM_HEAD + "medium" + SYSTEM_TAIL + "<|start|>user<|message|>x<|end|><|start|>assistant",
                HarmonyPrompt.render(ReasoningEffort.MEDIUM, DATE, null, "x"));
    }

    // developer_tools_text(get_time) from edgeoss.formats.tools; tests/test_tools.py checks both against
    // openai-harmony
    static final String TOOLS_SECTION = "# Tools\n\n## functions\n\nnamespace functions {\n\n// Current time\n"
            + "type get_time = (_: {\ntz?: string, // default: \"UTC\"\n}) => any;\n\n} // namespace functions";
    static final String WITH_TOOLS = "<|start|>system<|message|>You are ChatGPT, a large language model trained by "
            + "OpenAI.\nKnowledge cutoff: 2024-06\nCurrent date: 2025-01-31\n\nReasoning: low\n\n# Valid channels: "
            + "analysis, commentary, final. Channel must be included for every message.\nCalls to these tools must go "
            + "to the commentary channel: 'functions'.<|end|><|start|>developer<|message|># Instructions\n\nBe brief."
            + "\n\n" + TOOLS_SECTION + "<|end|><|start|>user<|message|>What time is it?<|end|><|start|>assistant";

    @Test
    public void withToolsTheSystemSaysWhereCallsGoAndTheDeveloperDeclaresThem() {
        assertEquals(WITH_TOOLS, HarmonyPrompt.render(ReasoningEffort.LOW, DATE, "Be brief.", TOOLS_SECTION,
                "What time is it?"));
    }
}
