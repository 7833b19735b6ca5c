#!/usr/bin/env bash
# Regenerates tests/fixtures/metrics/ from the reference implementations.
#
# Usage: tools/metrics_reference/metrics_reference.sh --vqa-repo DIR --squad-script FILE --mme-calculation FILE
#   --vqa-repo         a checkout of github.com/GT-Vision-Lab/VQA at master a013f00
#   --squad-script     the official SQuAD v1.1 evaluate-v1.1.py
#   --mme-calculation  calculation.py from the MME benchmark's eval_tool.zip
# None of these three is on PyPI; everything else comes from PyPI (metrics_reference.requirements.txt).
# Needs python3.11 (the fixtures pin CPython 3.11 `sum` and `round` semantics).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/tools/.venv-metrics-vqa"
python="${PYTHON:-python3.11}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/pip" install -q -r "$here/metrics_reference.requirements.txt"
"$venv/bin/pip" install -q --no-deps lmms-eval==0.7.3 ms-vlmeval==0.0.20
exec "$venv/bin/python" "$here/metrics_reference.py" --out "$root/tests/fixtures/metrics" "$@"
