"""Frontend: from a model source on disk to the IR — load (source.py), export (export.py), translate."""
