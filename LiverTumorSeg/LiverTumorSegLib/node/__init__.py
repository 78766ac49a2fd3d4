"""The auto-segmentation DICOM node (``livertumor serve``): receives CT series, segments them, sends SEG + SR back.

- ``server``: the storage SCP (C-ECHO, C-STORE, allow list, refusals), series completion after a quiet period,
  the segmentation and sending threads, ``Node`` and ``serve``;
- ``jobs``: the persistent work folder (received instances, numbered jobs, sent markers, failed jobs), written so
  that nothing received is lost and a restart resumes;
- ``segmenter``: the segment step, the cascade worker (``worker.process.WorkerProcess``) as a child process with a
  job timeout;
- ``sender``: C-STORE of the results to the destination, retried with exponential back-off.

Not installed into Slicer (a hospital runs it as a service); may import core, io, models, worker and resources.
"""
