#!/usr/bin/env bash
# Runs every Go fuzz target of the project for FUZZTIME each (default 3s): `make test`
# runs them briefly, `make fuzz` longer. Seeds (f.Add and testdata/fuzz) always run as
# part of the normal tests too.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-3s}
fail=0
while IFS= read -r line; do
	file=${line%%:*}
	name=$(sed -E 's/^func (Fuzz[A-Za-z0-9_]+).*/\1/' <<<"${line#*:}")
	pkg=./$(dirname "$file")
	echo "fuzz: $pkg $name ($FUZZTIME)"
	if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "$pkg" >/tmp/hypersdk-fuzz.log 2>&1; then
		cat /tmp/hypersdk-fuzz.log
		fail=1
	fi
done < <(grep -rn --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]+\(f \*testing\.F\)' . | sed -E 's/^\.\///; s/^([^:]+):[0-9]+:/\1:/' | sort)
exit $fail
