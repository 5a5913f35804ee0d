"""Datasets on disk: Shapes-world shards and folders (``shapes_shards``)."""
