"""`python -m fastrsm.diagnose`: the same as the installed `fastrsm-diagnose`."""

import sys

from . import main

sys.exit(main())
