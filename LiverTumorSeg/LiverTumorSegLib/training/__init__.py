"""Training and evaluation of the cascade's models (thesis recipe, MSD data sets, demo models). Not
installed into Slicer.
"""
