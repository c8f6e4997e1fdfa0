# Sourced by scripts/run and scripts/test: sets $venv to a virtualenv with the package (editable)
# and its dev extra.
#   default              .venv, from the lock requirements-dev.txt with --require-hashes, then
#                        the package with --no-deps. The sha256 of the lock and pyproject.toml is
#                        kept in .venv/shard-lock.sha256: while it matches, nothing is installed;
#                        when it differs (a new lock, an older venv), the venv is synced: the
#                        locked versions installed, what the lock does not pin removed.
#   SHARD_DEPS=latest    .venv-latest, upgraded on every run to the newest releases that
#                        pyproject.toml's ranges allow, and what differs from the lock is listed.
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "shard needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

_shard_pip() { "$venv/bin/python" -m pip --quiet --disable-pip-version-check "$@"; }

# Compares $venv with the lock's pins (pip and the package itself apart). `unpinned` prints the
# names the lock lacks, one a line; `differs` tells on stderr what is at another version.
_shard_vs_lock() {
    "$venv/bin/python" - "$1" requirements-dev.txt <<'PY'
import re, sys
from importlib import metadata

def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()

mode, lock = sys.argv[1:]
pins: dict[str, list[str]] = {}
for name, version in re.findall(r"^([A-Za-z0-9][\w.-]*)==([^\s;\\]+)", open(lock).read(), re.M):
    pins.setdefault(norm(name), []).append(version)
for dist in sorted(metadata.distributions(), key=lambda d: norm(d.metadata["Name"])):
    name = norm(dist.metadata["Name"])
    if name in ("pip", "shard") or dist.version in pins.get(name, []):
        continue
    if mode == "unpinned" and name not in pins:
        print(name)
    elif mode == "differs":
        locked = " or ".join(pins.get(name, ["not pinned"]))
        print(f"== {name} {dist.version} (the lock: {locked})", file=sys.stderr)
PY
}

_shard_sync() {
    local stamp=$venv/shard-lock.sha256 want unpinned
    want=$("$venv/bin/python" -c 'import hashlib, sys
print(hashlib.sha256(b"".join(open(p, "rb").read() for p in sys.argv[1:])).hexdigest())' \
        requirements-dev.txt pyproject.toml)
    [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
    echo "== syncing $venv with requirements-dev.txt" >&2
    rm -f "$stamp"
    # --no-compile: byte-compiling every module of every package was a good part of a fresh
    # install; Python compiles (and caches) the modules a run imports, when it imports them.
    _shard_pip install --no-compile --require-hashes -r requirements-dev.txt
    unpinned=$(_shard_vs_lock unpinned)
    if [ -n "$unpinned" ]; then
        echo "== removing what the lock does not pin:" $unpinned >&2
        # shellcheck disable=SC2086  # one name a word
        _shard_pip uninstall --yes $unpinned
    fi
    _shard_pip install --no-deps --no-build-isolation -e .
    # Python caches the bytecode of what it imports, unless PYTHONDONTWRITEBYTECODE is set (as
    # on our machines and CI's): then every process compiles redis-py again, 0.35 s of each
    # daemon's start (and of a recovery). Compiling it all once takes about 6 s.
    "$venv/bin/python" -m compileall -q -j 0 "$("$venv/bin/python" -c 'import sysconfig
print(sysconfig.get_paths()["purelib"])')" shard >/dev/null ||
        echo "== byte-compiling the packages failed; they compile as they are imported" >&2
    echo "$want" >"$stamp"
}

case ${SHARD_DEPS:-lock} in
lock)
    venv=.venv
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    # One sync at a time: sessions that share the checkout share .venv.
    if command -v flock >/dev/null; then
        (flock 9; _shard_sync) 9>"$venv/sync.lock"
    else
        _shard_sync
    fi
    ;;
latest)
    venv=.venv-latest
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    echo "== upgrading $venv to the newest releases pyproject.toml allows" >&2
    _shard_pip install --no-compile --upgrade --upgrade-strategy eager -e '.[dev]'
    _shard_vs_lock differs
    ;;
*)
    echo "SHARD_DEPS=$SHARD_DEPS: use 'lock' (the default) or 'latest'" >&2
    exit 2
    ;;
esac
