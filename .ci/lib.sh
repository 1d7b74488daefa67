# Shared by the jobs in .ci/ (sourced, not run).

# The compiled request paths' tests: the compiled and differential tests of each
# integration, and the differential fuzzer (its CI profile unless
# AEGIS_FUZZ_PROFILE says otherwise).
COMPILED_TESTS=(
    tests/asgi/test_compiled.py
    tests/asgi/test_call.py
    tests/wsgi/test_compiled.py
    tests/wsgi/test_app_misuse.py
    tests/contrib/test_django_compiled.py
    tests/test_speedups.py
    tests/core/test_compiled_finalize.py
    tests/core/test_compiled_fold.py
    tests/core/test_free_lists.py
    tests/sinks/test_sqlite_rows.py
    tests/sinks/test_postgres_copy.py
    tests/core/test_histogram_text.py
    tests/sinks/test_sqlite_blocks.py
    tests/core/test_deque_take.py
    tests/fuzz
)
# What those tests import, beyond the package itself: a venv with only these
# installs in about 30 s where '.[dev]' takes about 75 s.
COMPILED_TEST_DEPS=(pytest pytest-timeout hypothesis django gunicorn uvicorn 'anyio[trio]' 'psycopg[binary,pool]'
    opentelemetry-api)

# Where the jobs build and keep their venvs and logs (ignored by git: build/).
CI_BUILD=build/ci

say() { printf '%s: %s\n' "${JOB:-ci}" "$*" >&2; }

# copy_tree DIR: the project's files (tracked, and new ones not ignored) into
# DIR, without any build product (no extension, no egg-info): a job that
# builds the extension its own way does it there, leaving the in-place one alone.
copy_tree() {
    rm -rf "$1"
    mkdir -p "$1"
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' file; do [ -e "$file" ] && printf '%s\0' "$file"; done \
        | tar --null -T - -cf - | tar -xf - -C "$1"
}

# build_extension PYTHON SRC: build aegis_mw._hotpath for PYTHON from SRC with
# the CFLAGS/LDFLAGS of the environment, and put it in SRC/aegis_mw/ (pip builds
# a wheel in isolation, with the setuptools pyproject.toml asks for).
build_extension() {
    local python=$1 src=$2 wheels
    wheels=$(mktemp -d)
    if ! "$python" -m pip wheel --quiet --no-deps --no-cache-dir -w "$wheels" "$src" \
        >"$wheels/pip.log" 2>&1; then
        cat "$wheels/pip.log" >&2
        return 1
    fi
    "$python" - "$wheels" "$src" <<'PY'
import pathlib, sys, zipfile
wheels, src = map(pathlib.Path, sys.argv[1:])
[wheel] = wheels.glob("*.whl")
with zipfile.ZipFile(wheel) as archive:
    names = [n for n in archive.namelist() if n.startswith("aegis_mw/_hotpath") and ".so" in n]
    if not names:
        sys.exit(f"{wheel.name} has no compiled module: the build failed (see above)")
    for name in names:
        archive.extract(name, src)
        print(f"built {name}")
PY
    rm -rf "$wheels"
}
