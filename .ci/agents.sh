#!/usr/bin/env bash
# Install the real agent CLIs that tests/test_real_agents.py runs offline against model
# stubs (../shared/RECIPES.md, "Real agent CLIs, offline"): pinned versions, into a cache
# folder (LATIS_AGENTS_DIR, default ~/.cache/latis/agents) that the tests look in.
# Idempotent: does nothing when the pinned versions are there. Quiet: prints the npm log
# only on failure (and exits non-zero; callers may go on, the tests then skip and say why).
set -euo pipefail

dir="${LATIS_AGENTS_DIR:-${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}/.cache/latis/agents}"
packages=(
    @anthropic-ai/claude-code@2.1.197
    # The newest claude-agent-acp that runs on node 20 (0.50.0 needs node >= 22).
    @agentclientprotocol/claude-agent-acp@0.49.0
    @openai/codex@0.169.0
)

for tool in node npm; do
    if ! command -v "$tool" >/dev/null; then
        echo "agents.sh: $tool not found: the real-agent tests will skip" >&2
        exit 1
    fi
done

installed() {  # installed NAME -> its version in $dir, or nothing
    node -e 'try { console.log(require(process.argv[1]).version) } catch {}' \
        "$dir/node_modules/$1/package.json"
}

missing=()
for spec in "${packages[@]}"; do
    name="${spec%@*}"
    [ "$(installed "$name")" = "${spec##*@}" ] || missing+=("$spec")
done
((${#missing[@]})) || exit 0

mkdir -p "$dir"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! npm install --prefix "$dir" --no-audit --no-fund --no-update-notifier \
        --save-exact --loglevel=error "${missing[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    echo "agents.sh: npm install ${missing[*]} into $dir failed: the real-agent tests will skip" >&2
    exit 1
fi
# The CLIs ship native binaries in optional platform packages: check they run.
for bin in claude claude-agent-acp codex; do
    [ -x "$dir/node_modules/.bin/$bin" ] || {
        cat "$log" >&2
        echo "agents.sh: $dir/node_modules/.bin/$bin is missing after the install" >&2
        exit 1
    }
done
for bin in claude codex; do
    if ! "$dir/node_modules/.bin/$bin" --version </dev/null >>"$log" 2>&1; then
        cat "$log" >&2
        echo "agents.sh: $bin --version failed after the install" >&2
        exit 1
    fi
done
