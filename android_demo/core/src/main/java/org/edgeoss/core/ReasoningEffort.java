package org.edgeoss.core;

import java.util.Locale;

/** gpt-oss reasoning effort, written into the harmony system message as "Reasoning: low|medium|high". */
public enum ReasoningEffort {
    LOW, MEDIUM, HIGH;

    public String wireName() {
        return name().toLowerCase(Locale.ROOT);
    }
}
