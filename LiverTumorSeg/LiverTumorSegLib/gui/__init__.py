"""What the modules' widgets share: installing Python packages after asking, and polling a background run
with a progress bar. The GUI layer: imports Qt and ``slicer.util``'s dialogs; only module files import it."""
