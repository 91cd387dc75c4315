#!/usr/bin/env bash
# The house's rules that a tool can check; `make lint` runs this, and `make test` (so CI)
# runs `make lint` first. Every check runs; the script fails if any did.
#
#   ruff format --check   formatting (line length 100)
#   ruff check            the rule set in pyproject.toml [tool.ruff.lint]
#   mypy                  types of kubetune/, operator/, trainer/ ([tool.mypy])
#   lint-imports          the layering contracts ([tool.importlinter])
#
# mypy and import-linter read the product as the one package it is installed as:
# kubetune, with kubetune.operator from operator/ and kubetune.trainer from trainer/.
# Neither follows the import hook of setuptools' editable install, so they read a view
# of symlinks in .lint/ (ignored by git), and mypy's paths are written back as the
# repository's own.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

view=.lint/kubetune
rm -rf "$view"
mkdir -p "$view"
for entry in kubetune/*; do
  [[ "$(basename "$entry")" == __pycache__ ]] || ln -s "../../$entry" "$view/"
done
ln -s ../../operator "$view/operator"
ln -s ../../trainer "$view/trainer"

failed=()
run() {
  local name=$1
  shift
  echo "== $name"
  "$@" || failed+=("$name")
}

run "ruff format" ruff format --check --quiet .
run "ruff check" ruff check --quiet .
# shellcheck disable=SC2016  # the commands are run by `bash -c`, which expands them
run "mypy" bash -c 'set -o pipefail; cd .lint && mypy --config-file ../pyproject.toml -p kubetune |
  sed -e "s#^kubetune/operator/#operator/#" -e "s#^kubetune/trainer/#trainer/#"'
# shellcheck disable=SC2016
run "import-linter" bash -c 'set -o pipefail; cd .lint && lint-imports --no-cache ../pyproject.toml |
  sed -n "/^Contracts$/,\$p"'

if ((${#failed[@]})); then
  echo "lint failed: ${failed[*]}" >&2
  exit 1
fi
echo "lint: all checks passed"
