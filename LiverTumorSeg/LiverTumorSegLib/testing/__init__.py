"""Test support: the headless Slicer bootstrap and the scenarios shared by Slicer's self-test and the
pytest suite.
"""
