#!/usr/bin/env bash
# Build llama.cpp's own llama-server, llama-bench and llama-batched-bench: the native reference that
# `python -m bench` sets our figures beside (see bench/README.md).
#
#   bench/build-native.sh [DIR]     # default DIR: .native; the binaries land in DIR/bin
#
# The source is the llama.cpp that llama-cpp-python vendors, from the same pinned sdist as our own
# build (pip download takes it from the package registry), so both sides run the same llama.cpp.
# It is compiled as llama-cpp-python is by `make env`: -march=native without AMX, whose tile
# instructions fault on the VMs we run on (a native build with AMX dies on its first prompt of 32+
# tokens there). About 6 minutes on 2 cores; nothing is rebuilt when the binaries exist.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.native}"
python="${PYTHON:-python3}"
version="$(sed -n 's/.*"llama-cpp-python==\([0-9][0-9.]*\)".*/\1/p' pyproject.toml | head -n1)"
[ -n "$version" ] || { echo "no llama-cpp-python==X pin in pyproject.toml" >&2; exit 1; }
bins=(llama-server llama-bench llama-batched-bench)
if [ -x "$dir/bin/llama-server" ] && [ -x "$dir/bin/llama-bench" ] && [ -x "$dir/bin/llama-batched-bench" ] \
    && [ "$(cat "$dir/bin/VERSION" 2>/dev/null)" = "$version" ]; then
    echo "native llama.cpp $version already built in $dir/bin"
    exit 0
fi
mkdir -p "$dir/src"
sdist="$dir/src/llama_cpp_python-$version.tar.gz"
[ -f "$sdist" ] || "$python" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$dir/src"
tar -xzf "$sdist" -C "$dir/src"
source_dir="$dir/src/llama_cpp_python-$version/vendor/llama.cpp"
flags=""
[ "$(uname -m)" = x86_64 ] && flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
log="$dir/build.log"
echo "building native llama.cpp $version in $dir (log: $log)"
{
    cmake -S "$source_dir" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
        -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" &&
        cmake --build "$dir/build" --parallel "$(nproc)" --target "${bins[@]}"
} > "$log" 2>&1 || { tail -n 30 "$log" >&2; echo "the build failed; the whole log is $log" >&2; exit 1; }
mkdir -p "$dir/bin"
for bin in "${bins[@]}"; do cp "$dir/build/bin/$bin" "$dir/bin/$bin"; done
echo "$version" > "$dir/bin/VERSION"
echo "native llama.cpp $version built in $dir/bin (LLAMA_NATIVE_DIR=$dir/bin)"
