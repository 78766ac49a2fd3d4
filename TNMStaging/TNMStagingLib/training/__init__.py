"""Cohorts of CTs with stages, feature tables, and the phantom cohort of the demo model. Not installed
into Slicer."""
