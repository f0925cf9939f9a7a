"""The engine: one process per device owning the model sessions and batchers of a multi-process host."""
