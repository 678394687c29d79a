#!/usr/bin/env sh
# Rules as code in CI: validate the rules, run their tests, and replay the committed recordings
# through the rules of the target branch and of this change, writing the difference as markdown
# (rules-diff.md, for a pull-request comment). Any CI can run it; see docs/diff.md.
#
#   deploy/ci/rules-check.sh [BASE_REF] [GATES...]
#
# BASE_REF defaults to origin/main; GATES are `--fail-on` values (default: removed), e.g.
# `deploy/ci/rules-check.sh origin/main removed 'severity>=MAJOR'`. Needs `rulechain` on the
# PATH (or RULECHAIN=path) and the recordings in examples/*.jsonl and examples/*.jsonl.gz (or
# RECORDINGS="a b"); the markdown goes to rules-diff.md (or OUT=path).
set -eu
rc=${RULECHAIN:-rulechain}
base=${1:-origin/main}
[ "$#" -gt 0 ] && shift
gates=""
if [ "$#" -eq 0 ]; then set -- removed; fi
for g in "$@"; do gates="$gates --fail-on $g"; done
config=${CONFIG:-examples/rulechain.yaml}
recordings=${RECORDINGS:-$(ls examples/*.jsonl examples/*.jsonl.gz 2>/dev/null)}
inputs=""
for r in $recordings; do inputs="$inputs --input $r"; done

"$rc" validate --config "$config"
"$rc" test --config "$config"
status=0
# shellcheck disable=SC2086 # the lists are meant to split into arguments
out=${OUT:-rules-diff.md}
"$rc" diff --config "$config" --base "$base" $inputs --format markdown $gates > "$out" || status=$?
cat "$out"
if [ "$status" -eq 2 ]; then
  echo "rules-check: diff failed (see above)" >&2
fi
exit "$status"
