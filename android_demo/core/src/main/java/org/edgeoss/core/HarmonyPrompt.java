package org.edgeoss.core;

import java.time.LocalDate;

/**
 * Renders a one-turn gpt-oss conversation in the harmony format, ending where the assistant starts
 * (the same text as openai-harmony's render_conversation_for_completion with no tools).
 */
public final class HarmonyPrompt {
    private HarmonyPrompt() {
    }

    /**
     * @param instructions developer instructions, or null/empty for none (then no developer message)
     */
    public static String render(ReasoningEffort effort, LocalDate today, String instructions, String userMessage) {
        StringBuilder sb = new StringBuilder();
        sb.append("<|start|>system<|message|>")
                .append("You are ChatGPT, a large language model trained by OpenAI.\n")
                .append("Knowledge cutoff: 2024-06\n")
                .append("Current date: ").append(today).append("\n\n")
                .append("Reasoning: ").append(effort.wireName()).append("\n\n")
                .append("# Valid channels: analysis, commentary, final. Channel must be included for every message.")
                .append("<|end|>");
        if (instructions != null && !instructions.isEmpty()) {
            sb.append("<|start|>developer<|message|># Instructions\n\n").append(instructions).append("<|end|>");
        }
        sb.append("<|start|>user<|message|>").append(userMessage).append("<|end|>");
        sb.append("<|start|>assistant");
        return sb.toString();
    }
}
