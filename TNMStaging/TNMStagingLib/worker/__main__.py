"""``python -m TNMStagingLib.worker JOB.json``: the staging worker process."""

import sys

from TNMStagingLib.worker.staging import main

sys.exit(main())
