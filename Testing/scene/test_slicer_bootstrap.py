"""The headless Slicer bootstrap: module logics wired like Slicer's application, slicer.util helpers working."""

from __future__ import annotations

import numpy as np
import pytest

from LiverTumorSegLib.testing import headless_slicer as slicer_bootstrap

MODULES = {  # slicer.modules attribute -> (module name registered on the application logic, logic class)
    "colors": ("Colors", "vtkSlicerColorLogic"),
    "volumes": ("Volumes", "vtkSlicerVolumesLogic"),
    "terminologies": ("Terminologies", "vtkSlicerTerminologiesModuleLogic"),
    "segmentations": ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
    "subjecthierarchy": ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
    "markups": ("Markups", "vtkSlicerMarkupsLogic"),
    "tables": ("Tables", "vtkSlicerTablesLogic"),
}


@pytest.mark.parametrize("attribute", list(MODULES))
def test_module_logic_reachable_with_scene_and_app_logic(slicer_app, attribute):
    import slicer

    name, class_name = MODULES[attribute]
    module = getattr(slicer.modules, attribute)
    logic = module.logic()
    assert module.name == name
    assert logic.GetClassName() == class_name
    assert logic.GetMRMLScene() is slicer.mrmlScene
    assert logic.GetMRMLApplicationLogic() is slicer_app.app_logic
    assert slicer_app.app_logic.GetModuleLogic(name) is logic
    assert getattr(slicer.moduleNames, name) == name


def test_bootstrap_is_idempotent_and_sets_the_application_scene(slicer_app):
    import slicer

    assert slicer_bootstrap.bootstrap() is slicer_app
    assert slicer.mrmlScene is slicer_app.scene
    assert slicer_app.app_logic.GetMRMLScene() is slicer.mrmlScene
    assert slicer_app.app_logic.GetColorLogic() is slicer.modules.colors.logic()


def test_default_nodes_survive_closing_the_scene(mrml_scene):
    grey = mrml_scene.GetNodeByID("vtkMRMLColorTableNodeGrey")
    assert grey is not None and grey.GetNumberOfColors() == 256
    assert mrml_scene.GetFirstNodeByClass("vtkMRMLCrosshairNode") is not None
    node = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "temporary")
    assert slicer_bootstrap.new_scene() is mrml_scene
    assert mrml_scene.GetNodeByID(node.GetID()) is None
    assert mrml_scene.GetNodeByID("vtkMRMLColorTableNodeGrey") is not None
    assert mrml_scene.GetFirstNodeByClass("vtkMRMLCrosshairNode") is not None


def test_slicer_util_segment_helpers_work_headless(mrml_scene):
    """slicer.util's helpers go through slicer.modules.volumes/segmentations.logic() and slicer.mrmlScene."""
    import slicer

    voxels = np.zeros((4, 5, 6), dtype=np.int16)
    volume = slicer.util.addVolumeFromArray(voxels, ijkToRAS=np.diag([0.5, 0.7, 2.0, 1.0]), name="ct")
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("blob")
    mask = np.zeros(voxels.shape, dtype=np.uint8)
    mask[1:3, 2:4, 1:5] = 1
    mask[3, 4, 5] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, volume)
    read_back = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)
    np.testing.assert_array_equal(read_back, mask)
    assert mrml_scene.GetNodesByName("__temp__").GetNumberOfItems() == 0
