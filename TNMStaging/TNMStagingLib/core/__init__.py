"""Compute core: the AJCC 8th-edition rules, staging features (Segment Anything encoder + measured
lesions), the XGBoost staging classifier and the prediction of one case. Never imports ``slicer`` or Qt."""
