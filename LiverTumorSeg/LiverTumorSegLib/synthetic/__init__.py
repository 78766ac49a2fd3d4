"""Synthetic CT phantoms with truth labels (fixtures for the demo, training of the demo models and the
tests). Not installed into Slicer.
"""
