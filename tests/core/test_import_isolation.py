"""dpe_core must stay free of orchestration imports (it runs on bare GPU machines)."""

import subprocess
import sys


def test_dpe_core_does_not_load_prefect_or_dask():
    code = (
        "import sys, dpe_core, dpe_core.nn, dpe_core.losses, dpe_core.training, dpe_core.io, dpe_core.io.storage\n"
        "import importlib.util\n"
        "for extra in ('dpe_core.inference',):\n"
        "    if importlib.util.find_spec(extra): __import__(extra)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'dask', 'distributed', 's3fs'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"dpe_core imported orchestration modules: {result.stdout} {result.stderr}"
