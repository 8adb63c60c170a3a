package org.edgeoss.core;

import java.time.LocalDate;

/**
 * Renders a one-turn gpt-oss conversation in the harmony format, ending where the assistant starts
 * (the same text as openai-harmony's render_conversation_for_completion). Function tools come pre-rendered
 * by openai-harmony at package time (the bundle's tools section: "# Tools\n\n## functions\n\nnamespace
 * functions {...}"), so the phone does not re-implement JSON-schema rendering.
 */
public final class HarmonyPrompt {
    private HarmonyPrompt() {
    }

    /**
     * @param instructions developer instructions, or null/empty for none (then no developer message)
     */
    public static String render(ReasoningEffort effort, LocalDate today, String instructions, String userMessage) {
        return render(effort, today, instructions, null, userMessage);
    }

    /**
     * @param toolsSection the developer message's tools section as the bundle carries it, or null for no tools
     */
    public static String render(ReasoningEffort effort, LocalDate today, String instructions, String toolsSection,
                                String userMessage) {
        boolean hasInstructions = instructions != null && !instructions.isEmpty();
        boolean hasTools = toolsSection != null && !toolsSection.isEmpty();
        StringBuilder sb = new StringBuilder();
        sb.append("<|start|>system<|message|>")
                .append("You are ChatGPT, a large language model trained by OpenAI.\n")
                .append("Knowledge cutoff: 2024-06\n")
                .append("Current date: ").append(today).append("\n\n")
                .append("Reasoning: ").append(effort.wireName()).append("\n\n")
                .append("# Valid channels: analysis, commentary, final. Channel must be included for every message.");
        if (hasTools) sb.append("\nCalls to these tools must go to the commentary channel: 'functions'.");
        sb.append("<|end|>");
        if (hasInstructions || hasTools) {
            sb.append("<|start|>developer<|message|>");
            if (hasInstructions) sb.append("# Instructions\n\n").append(instructions);
            if (hasInstructions && hasTools) sb.append("\n\n");
            if (hasTools) sb.append(toolsSection);
            sb.append("<|end|>");
        }
        sb.append("<|start|>user<|message|>").append(userMessage).append("<|end|>");
        sb.append("<|start|>assistant");
        return sb.toString();
    }
}
