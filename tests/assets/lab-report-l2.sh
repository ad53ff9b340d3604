#!/bin/sh
# lab-report KEY=VALUE... (in L2): like L1's, with keys prefixed "l2." so both levels can report
# into the same outcome (L2's serial reaches the host through tinyvmm's stdout in L1).
line="LAB"
for kv in "$@"; do line="$line l2.$kv"; done
echo "$line"
