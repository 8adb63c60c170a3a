// Versions follow llama.cpp's own examples/llama.android at the pinned llama.cpp commit (see README.md).
plugins {
    id("com.android.application") version "8.13.2" apply false
    id("org.jetbrains.kotlin.android") version "2.3.0" apply false
}
