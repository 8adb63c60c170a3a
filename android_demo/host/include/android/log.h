// Host stand-in for the NDK's <android/log.h>: the JNI bridge builds and runs on the build machine, where
// llama.cpp's log lines (info and below) are dropped and warnings and errors go to stderr.
#pragma once
#include <stdio.h>

enum {
    ANDROID_LOG_UNKNOWN = 0, ANDROID_LOG_DEFAULT, ANDROID_LOG_VERBOSE, ANDROID_LOG_DEBUG, ANDROID_LOG_INFO,
    ANDROID_LOG_WARN, ANDROID_LOG_ERROR, ANDROID_LOG_FATAL, ANDROID_LOG_SILENT,
};

static inline int __android_log_write(int prio, const char *tag, const char *text) {
    return prio >= ANDROID_LOG_WARN ? fprintf(stderr, "%s: %s", tag, text) : 0;
}
