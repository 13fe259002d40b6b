#!/usr/bin/env bash
# One-command setup: .venv, pinned dependencies, ROS 2 (wheels or a sourced system install),
# and a colcon build of src/. Idempotent: a run with nothing to do returns in about a second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# DEFI_VENV reuses another checkout's environment (the clean-clone test does this).
VENV="${DEFI_VENV:-$ROOT/.venv}"
STAMPS="$VENV/.defi-stamps"
BUILD_STAMP="$ROOT/build/.defi-build-stamp"
log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

# --- 1. which ROS: a sourced system ROS 2 wins over the PyPI wheels -----------------------------
SYSTEM_ROS=""
if [[ -n "${ROS_DISTRO:-}" && -d "/opt/ros/${ROS_DISTRO}" ]]; then
  SYSTEM_ROS="/opt/ros/${ROS_DISTRO}"
  log "using system ROS 2 ${ROS_DISTRO} from ${SYSTEM_ROS} (PyPI ROS wheels are skipped)"
fi

# --- 2. python + venv ----------------------------------------------------------------------------
pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
  if [[ -n "$SYSTEM_ROS" ]]; then command -v python3; return; fi  # must match the distro's python
  for p in python3.11 python3.12 python3.10 python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(not ((3,10) <= sys.version_info[:2] <= (3,12)))' 2>/dev/null; then
      command -v "$p"; return
    fi
  done
  die "need Python 3.10, 3.11 or 3.12 (set PYTHON=/path/to/python3.X)"
}

if [[ ! -x "$VENV/bin/python" ]]; then
  PY="$(pick_python)"
  log "creating .venv with $PY ($("$PY" --version 2>&1))"
  "$PY" -c 'import venv, ensurepip' 2>/dev/null || die "$PY lacks venv/ensurepip: apt-get install python3-venv"
  if [[ -n "$SYSTEM_ROS" ]]; then "$PY" -m venv --system-site-packages "$VENV"; else "$PY" -m venv "$VENV"; fi
fi
mkdir -p "$STAMPS"
# One setup at a time (parallel `make test` runs share the venv and the build).
exec 9>"$STAMPS/lock"
flock 9
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

# --- 3. build tools for the interface package (cmake comes from pip) -----------------------------
if ! command -v g++ >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing g++ and make with apt-get (needed to build defi_msgs)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ make >/dev/null
  else
    die "g++ and make are needed to build defi_msgs: sudo apt-get install g++ make"
  fi
fi
# MuJoCo renders offscreen through EGL (or OSMesa); Debian packages them separately.
if ! ldconfig -p 2>/dev/null | grep -qE 'libEGL\.so\.1|libOSMesa\.so'; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing libegl1 libgl1 (MuJoCo offscreen rendering)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libgl1 libgles2 >/dev/null
  else
    log "WARNING: no libEGL/libOSMesa found; simulation rendering will fail (apt-get install libegl1)"
  fi
fi

# --- 4. python dependencies (torch first, alone and pinned) --------------------------------------
DEPS_KEY="$(hash_of requirements.txt requirements-ros.txt constraints.txt)-${SYSTEM_ROS:-wheels}"
if [[ "$(cat "$STAMPS/deps" 2>/dev/null)" != "$DEPS_KEY" ]]; then
  TORCH_PIN="$(grep -E '^torch==' constraints.txt)"
  log "installing $TORCH_PIN"
  "${PIP[@]}" install "$TORCH_PIN"
  log "installing pinned dependencies (constraints.txt)"
  "${PIP[@]}" install -r requirements.txt -c constraints.txt
  if [[ -z "$SYSTEM_ROS" ]]; then
    log "installing ROS 2 wheels (requirements-ros.txt)"
    "${PIP[@]}" install -r requirements-ros.txt -c constraints.txt
  fi
  # The wheels' CMake exports hard-code the manylinux build machine's python and numpy includes.
  if [[ -z "$SYSTEM_ROS" ]]; then
    PY_INC="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    NP_INC="$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')"
    mapfile -t FILES < <(grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+' "$VENV/share" --include='*.cmake' || true)
    if ((${#FILES[@]})); then
      log "mending ${#FILES[@]} CMake export files of the ROS wheels"
      sed -i -E \
        -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#${NP_INC}#g" \
        -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#${PY_INC}#g" \
        "${FILES[@]}"
    fi
  fi
  echo "$DEPS_KEY" > "$STAMPS/deps"
  rm -f "$BUILD_STAMP"
fi

# --- 5. colcon build (symlink install: python edits need no rebuild) -----------------------------
# Rebuild only when something a build consumes changes: manifests, setup files, interfaces, CMake.
# tf2_msgs has no PyPI wheel: build the upstream copy in vendor/ unless a system ROS 2 (or the
# wheels) already have it; building it there too would shadow the real package.
BASE_PATHS=(src)
if [[ ! -f "${SYSTEM_ROS:-$VENV}/share/tf2_msgs/package.xml" ]]; then BASE_PATHS+=(vendor/tf2_msgs); fi
BUILD_KEY="$(find "${BASE_PATHS[@]}" -type f \( -name package.xml -o -name setup.py -o -name setup.cfg \
  -o -name CMakeLists.txt -o -name '*.msg' -o -name '*.srv' -o -name '*.action' \) -print0 | sort -z \
  | xargs -0 cat | sha256sum | cut -c1-16)-$(find src -maxdepth 2 -mindepth 1 -type d | sort | sha256sum | cut -c1-8)"
# installed data files (launch, config, rviz): a new or removed one needs a build, an edited one not
BUILD_KEY="$BUILD_KEY-$(find src -mindepth 3 -maxdepth 3 -type f \( -path '*/launch/*' -o -path '*/config/*' \
  -o -path '*/rviz/*' \) | sort | sha256sum | cut -c1-8)"
if [[ "$(cat "$BUILD_STAMP" 2>/dev/null)" != "$BUILD_KEY" || ! -f install/setup.bash ]]; then
  log "colcon build --symlink-install"
  mkdir -p build
  (
    set +u
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
    if [[ -n "$SYSTEM_ROS" ]]; then source "$SYSTEM_ROS/setup.bash"; else export AMENT_PREFIX_PATH="$VENV"; fi
    export PYTHONWARNINGS="ignore"
    colcon --log-base build/log build --symlink-install --base-paths "${BASE_PATHS[@]}" \
      --event-handlers console_cohesion- status- summary+ \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF \
      > build/colcon-build.log 2>&1 || { tail -n 60 build/colcon-build.log >&2; exit 1; }
  ) || die "colcon build failed (full log: build/colcon-build.log)"
  echo "$BUILD_KEY" > "$BUILD_STAMP"
fi
log "ready: source scripts/env.sh"
