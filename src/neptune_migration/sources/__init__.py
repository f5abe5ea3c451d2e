"""Sources: where runs are extracted from (Neptune 3.x, Neptune 2.x, offline folders)."""
