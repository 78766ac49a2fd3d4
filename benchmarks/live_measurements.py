"""Benchmark: the live measurements table after a Segment Editor stroke, on a CT-sized grid (headless slicer-core).

The 512x512x200 labelmap of ``benchmarks/flr.py`` (0.8 x 0.8 x 2.5 mm, a 1500 mL ellipsoidal liver with two
tumors) becomes a segmentation on a CT volume node, as ``import_results`` makes it. Each edit paints a 10 mm ball
into a segment the way Segment Editor's paint effect does (``SetBinaryLabelmapToSegment`` with
``MODE_MERGE_MASK`` on the stroke's extent), alternating a tumor stroke inside the liver and a liver stroke across its edge; then ``MeasurementsUpdater.update_if_dirty``
(read the changed segments, measure, rewrite the table) is timed. The first update (every segment read) is
reported separately. Prints one JSON line; times in seconds.

    .venv/bin/python benchmarks/live_measurements.py [--edits 8]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flr import SHAPE_XYZ, SPACING_MM, phantom_labels  # noqa: E402

from LiverTumorSegLib.testing import headless_slicer  # noqa: E402

STROKE_RADIUS_MM = 5.0


def _stroke(volume_node, centre_ijk):
    """A ball of ``STROKE_RADIUS_MM`` around voxel ``centre_ijk`` as an oriented image on the CT grid."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    radius = [int(np.ceil(STROKE_RADIUS_MM / s)) for s in SPACING_MM]
    z, y, x = np.ogrid[-radius[2]: radius[2] + 1, -radius[1]: radius[1] + 1, -radius[0]: radius[0] + 1]
    ball = ((x * SPACING_MM[0]) ** 2 + (y * SPACING_MM[1]) ** 2 + (z * SPACING_MM[2]) ** 2
            <= STROKE_RADIUS_MM**2).astype(np.uint8)
    image = slicer.vtkOrientedImageData()
    start = [c - r for c, r in zip(centre_ijk, radius, strict=True)]
    image.SetExtent(*(v for a in range(3) for v in (start[a], start[a] + ball.shape[2 - a] - 1)))
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(ball.ravel(), deep=True))
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=8, help="strokes to time (default 8)")
    args = parser.parse_args()
    app = headless_slicer.bootstrap()
    import SimpleITK as sitk
    import slicer

    from LiverTumorSegLib.scene import results, segmentations
    from LiverTumorSegLib.scene import volumes as scene_bridge

    labels = phantom_labels()
    volume = scene_bridge.volume_node_from_image(sitk.Cast(labels, sitk.sitkInt16) * 60, "CT", scene=app.scene)
    segmentation = segmentations.labelmap_to_segmentation(labels, volume, scene=app.scene)
    updater = results.MeasurementsUpdater(segmentation, volume)
    start = time.perf_counter()
    updater.update()
    first_s = time.perf_counter() - start
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    centre = [n // 2 for n in SHAPE_XYZ]
    times, reads = [], []
    for edit in range(args.edits):
        segment_id = ("liver_tumor", "liver")[edit % 2]
        # a tumor stroke inside the liver; a liver stroke across the liver's right edge (it grows the liver)
        ijk = ([centre[0] - 60 + 15 * edit, centre[1] + 10, centre[2]] if segment_id == "liver_tumor"
               else [centre[0] + 118, centre[1] - 20 + 5 * edit, centre[2]])
        stroke = _stroke(volume, ijk)
        logic.SetBinaryLabelmapToSegment(stroke, segmentation, segment_id, logic.MODE_MERGE_MASK, stroke.GetExtent())
        before = updater.measurer.reader.reads
        start = time.perf_counter()
        table = updater.update_if_dirty()
        times.append(time.perf_counter() - start)
        reads.append(updater.measurer.reader.reads - before)
        assert table is not None, "an edit must rewrite the table"
    # the incremental result equals a measurement of Slicer's own full-grid export of the segments
    from LiverTumorSegLib.core.measurements import measure_labelmap

    exported = {sid: sitk.GetArrayFromImage(segmentations.segments_mask(segmentation, [sid], volume)) > 0
                for sid in ("liver", "liver_tumor")}
    check = np.where(exported["liver_tumor"], 2, np.where(exported["liver"], 1, 0)).astype(np.uint8)
    truth = measure_labelmap(segmentations.image_on_volume_grid(check, volume))
    live = updater.measurer.measure()[0]
    assert abs(live.tumor_volume_ml - truth.tumor_volume_ml) < 1e-6, (live.tumor_volume_ml, truth.tumor_volume_ml)
    assert abs(live.liver_volume_ml - truth.liver_volume_ml) < 1e-6 and len(live.lesions) == len(truth.lesions)
    print(json.dumps({
        "benchmark": "live_measurements",
        "shape": list(SHAPE_XYZ),
        "spacing_mm": list(SPACING_MM),
        "edits": args.edits,
        "first_update_s": round(first_s, 3),
        "update_after_edit_median_s": round(statistics.median(times), 3),
        "update_after_edit_max_s": round(max(times), 3),
        "segments_read_per_edit": sorted(set(reads)),
        "tumor_ml_after_edits": round(live.tumor_volume_ml, 2),
        "liver_ml_after_edits": round(live.liver_volume_ml, 1),
        "target_s": 0.3,
        "machine": platform.machine(),
        "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
