#!/usr/bin/env bash
# Builds the app's JNI bridge for this machine (host/CMakeLists.txt, against llama-cpp-python's llama.cpp) and
# compiles android_demo/core with the host harness (host/java) into OUT (default android_demo/build/host):
#   OUT/lib/libedgeoss_jni.so   OUT/classes/   then: java -cp OUT/classes -Djava.library.path=OUT/lib \
#       org.edgeoss.demo.HostRun BUNDLE [options]
# PYTHON is the interpreter whose llama-cpp-python to build against (default: python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/../build/host}"
python="${PYTHON:-python3}"
read -r include lib < <("$python" - <<'PY'
import pathlib, sysconfig, llama_cpp
print(pathlib.Path(sysconfig.get_paths()["purelib"]) / "include", pathlib.Path(llama_cpp.__file__).parent / "lib")
PY
)
java_home="$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")"
cmake -S "$here" -B "$out/cmake" -DCMAKE_BUILD_TYPE=Release -DLLAMA_INCLUDE_DIR="$include" \
      -DLLAMA_LIB_DIR="$lib" -DJAVA_HOME="$java_home" -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$out/lib" >/dev/null
cmake --build "$out/cmake" -j 2 >/dev/null
mapfile -t sources < <(find "$here/../core/src/main/java" "$here/java" -name '*.java')
mkdir -p "$out/classes"
javac --release 17 -Xlint:all -Werror -encoding UTF-8 -d "$out/classes" "${sources[@]}"
echo "$out"
