#!/usr/bin/env bash
# Compiles android_demo/core and its JUnit 4 tests with the JDK and runs them; no Android SDK, no
# Gradle, no network. Needs javac/java (JDK 17+) and JUnit 4 + Hamcrest jars (Debian: junit4).
# Installs nothing. The last line printed is "N passed, M failed"; the exit status is non-zero on
# any failure. JUNIT_JAR and HAMCREST_JAR override the jar locations.
set -euo pipefail

core="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$core/../build/core-tests"   # android_demo/build/ is gitignored
junit="${JUNIT_JAR:-/usr/share/java/junit4.jar}"
hamcrest="${HAMCREST_JAR:-/usr/share/java/hamcrest-core.jar}"

for tool in javac java; do
    command -v "$tool" >/dev/null || {
        echo "error: $tool not found: install a JDK 17+ (Debian: openjdk-17-jdk-headless)" >&2
        exit 2
    }
done
for jar in "$junit" "$hamcrest"; do
    [ -f "$jar" ] || {
        echo "error: $jar not found: install JUnit 4 (Debian: junit4) or set JUNIT_JAR/HAMCREST_JAR" >&2
        exit 2
    }
done

rm -rf "$out"
mkdir -p "$out/main" "$out/test"
cp="$junit:$hamcrest"
mapfile -t main_src < <(find "$core/src/main/java" -name '*.java')
mapfile -t test_src < <(find "$core/src/test/java" -name '*.java')
mapfile -t tests < <(cd "$core/src/test/java" && find . -name '*Test.java' | sort \
    | sed -e 's|^\./||' -e 's|\.java$||' -e 's|/|.|g')
javac --release 17 -Xlint:all -encoding UTF-8 -d "$out/main" "${main_src[@]}"
javac --release 17 -Xlint:all -encoding UTF-8 -cp "$out/main:$cp" -d "$out/test" "${test_src[@]}"
java -cp "$out/main:$out/test:$cp" org.edgeoss.core.RunTests "${tests[@]}"
