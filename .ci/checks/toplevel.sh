#!/usr/bin/env bash
# Every tracked file at the top level must be referenced by another tracked
# file (README, a script, a test, the Containerfile ...), so stray files
# (a capture, a scratch note) cannot sit in the tree unnoticed. Go sources,
# go.mod/go.sum, README.md and dotfiles are what tools find by name.
set -euo pipefail
cd "$(dirname "$0")/../.."
orphans=()
while IFS= read -r f; do
  case "$f" in
    *.go | go.mod | go.sum | README.md | .*) continue ;;
  esac
  if ! git grep -qF -- "$f" -- ":!$f"; then
    orphans+=("$f")
  fi
done < <(git ls-files | grep -v /)
if ((${#orphans[@]})); then
  echo "top-level files nothing refers to (remove them, or say in README.md what they are):"
  printf '  %s\n' "${orphans[@]}"
  exit 1
fi
echo "every top-level file is referenced"
