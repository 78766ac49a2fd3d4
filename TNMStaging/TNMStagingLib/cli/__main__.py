"""``python -m TNMStagingLib.cli``: the ``tnmstaging`` command."""

import sys

from TNMStagingLib.cli import main

sys.exit(main())
