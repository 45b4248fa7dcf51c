"""`python -m dpe_core.quality`: the quality table (same as `dpe quality`)."""

import sys

from dpe_core.quality.report import main

sys.exit(main())
