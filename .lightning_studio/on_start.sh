#!/bin/bash
# Lightning Studio runs this script every time the Studio starts, from the Studio's home directory
# (/teamspace/studios/this_studio). It installs mm_lightning as README command 1 does (pip install -e ".[dev]"),
# into the Studio's own Python environment (its jobs and multi-machine jobs run in a copy of that environment),
# and does nothing on later starts until pyproject.toml or the extras change.
#
#   MM_LIGHTNING_DIR     the clone (default: the folder above this script, else ~/mm_lightning, else ~/mm-lightning)
#   MM_LIGHTNING_EXTRAS  the extras to install (default: dev; e.g. "hf,video,docs" for a lighter install)
#
# Logs of earlier starts: ~/.lightning_studio/logs/
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
project=""
for candidate in "${MM_LIGHTNING_DIR:-}" "$here" "$HOME/mm_lightning" "$HOME/mm-lightning"; do
  if [ -n "$candidate" ] && grep -qs '^name = "mm_lightning"' "$candidate/pyproject.toml"; then
    project="$candidate"
    break
  fi
done
if [ -z "$project" ]; then
  echo "on_start.sh: no mm_lightning clone found (looked in ${MM_LIGHTNING_DIR:-\$MM_LIGHTNING_DIR unset}, $here," \
       "~/mm_lightning, ~/mm-lightning); clone it into the Studio's home or set MM_LIGHTNING_DIR" >&2
  exit 1
fi

extras="${MM_LIGHTNING_EXTRAS:-dev}"
stamp="${XDG_CACHE_HOME:-$HOME/.cache}/mm_lightning/studio-install.stamp"  # outside the clone: git ignores it
wanted="$(sha256sum "$project/pyproject.toml" | cut -d' ' -f1) $project [$extras] $(command -v python)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && command -v mm-lightning >/dev/null \
   && python -c "import mm_lightning" 2>/dev/null; then
  echo "on_start.sh: mm_lightning is installed from $project ([$extras]); nothing to do"
  exit 0
fi

echo "on_start.sh: installing mm_lightning from $project with [$extras]"
python -m pip install --quiet -e "$project[$extras]"
mkdir -p "$(dirname "$stamp")"
printf '%s' "$wanted" > "$stamp"
mm-lightning --help >/dev/null
echo "on_start.sh: done; try: cd $project && mm-lightning pipeline --config configs/pipelines/demo.yaml"
