# Source me: puts the project's venv, the colcon install and its executables into this shell.
#   source scripts/env.sh
# The venv's activate and colcon's setup.bash read unset variables: source them with nounset off,
# and give a `set -u` caller its setting back at the end.
case $- in *u*) _defi_nounset=1; set +u ;; *) _defi_nounset= ;; esac
_DEFI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
if [[ -n "${ROS_DISTRO:-}" && -f "/opt/ros/${ROS_DISTRO}/setup.bash" ]]; then
  # shellcheck disable=SC1090
  source "/opt/ros/${ROS_DISTRO}/setup.bash"
fi
# shellcheck disable=SC1091
source "${DEFI_VENV:-$_DEFI_ROOT/.venv}/bin/activate"
if [[ -f "$_DEFI_ROOT/install/setup.bash" ]]; then
  # shellcheck disable=SC1091
  source "$_DEFI_ROOT/install/setup.bash"
fi
# Node executables live in install/<pkg>/lib/<pkg> (for ros2 run); put them on PATH too,
# since the pip ROS wheels have no ros2 CLI.
for _d in "$_DEFI_ROOT"/install/*/lib/defi_*; do
  [[ -d "$_d" ]] && case ":$PATH:" in *":$_d:"*) ;; *) PATH="$_d:$PATH" ;; esac
done
export PATH
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[[ -z "$_defi_nounset" ]] || set -u
unset _d _DEFI_ROOT _defi_nounset
