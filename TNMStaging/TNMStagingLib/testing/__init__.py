"""Self-test scenarios shared by Slicer's self-test and the pytest suite."""
