"""``python -m LiverTumorSegLib.worker JOB.json``: the segmentation worker process."""

import sys

from LiverTumorSegLib.worker.segmentation import main

sys.exit(main())
