"""Make ``import st_ray`` work when a job runs from a checkout (e.g. ``ray job submit
--working-dir .``) without the package being installed."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
