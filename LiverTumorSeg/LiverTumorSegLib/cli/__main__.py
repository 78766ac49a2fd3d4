"""``python -m LiverTumorSegLib.cli``: the ``livertumor`` command."""

import sys

from LiverTumorSegLib.cli import main

sys.exit(main())
