"""Quality benchmark: models vs classical baselines on real photos damaged by defect families A and B.

    python benchmarks/quality.py [--model default ...] [--family A|B] [--photos DIR] [--all-photos]
                                 [--max-side N] [--out DIR]

The same code as `dpe quality` (dpe_core/quality/report.py): for each photo, damage it at full resolution
(or at --max-side) with the family's fixed-seed draw, restore it with each method and score against the
original (PSNR dB, SSIM, mean CIEDE2000), plus a no-harm column (method(original) vs original). By default the
photos are the first model's test split (named in its sidecar) from ../shared/testdata/natural.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dpe_core.quality.report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
