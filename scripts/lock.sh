#!/usr/bin/env bash
# Regenerates the hashed lock files that `make install` and `make bench` install from. Run it as `make lock`.
#
#   requirements/dev.lock    the project's dependencies + the `dev` extra, plus pip and the build backend
#                            (setuptools, from [build-system]) so that nothing `make install` fetches is unhashed
#   requirements/bench.lock  the same + the `bench` extra (dlt), constrained to dev.lock's versions
#
# One universal resolution (any OS, CPython >= 3.11; CI is 3.11 on Linux x86_64), done by a pinned uv in a
# throwaway venv. Pins already in a lock are kept unless pyproject.toml needs otherwise, so a run after
# editing pyproject.toml changes only what that edit requires. Extra arguments go to every `uv pip compile`:
#   make lock LOCK_ARGS=--upgrade                        # move everything to the newest allowed versions
#   make lock LOCK_ARGS='--upgrade-package sqlalchemy'   # move one package
# UV=/path/to/uv uses that uv instead of installing one.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
PYTHON=${PYTHON:-python3}

if [[ -z "${UV:-}" ]]; then
    tool=$(mktemp -d)
    trap 'rm -rf "$tool"' EXIT
    "$PYTHON" -m venv "$tool"
    "$tool/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
    UV="$tool/bin/uv"
fi

mkdir -p requirements
build_requires=$("$PYTHON" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
compile=("$UV" pip compile --quiet --universal --python-version 3.11 --generate-hashes
         --no-config --custom-compile-command "make lock")

# stdin: what `make install` needs besides the project's own dependencies (pip itself and the build backend,
# installed first and used with --no-build-isolation for the editable install)
printf '%s\npip\n' "$build_requires" |
    "${compile[@]}" pyproject.toml - --extra dev -o requirements/dev.lock "$@"
"${compile[@]}" pyproject.toml --extra dev --extra bench -c requirements/dev.lock -o requirements/bench.lock "$@"

echo "wrote requirements/dev.lock ($(grep -c '^[a-zA-Z]' requirements/dev.lock) packages)" \
     "and requirements/bench.lock ($(grep -c '^[a-zA-Z]' requirements/bench.lock) packages)"
