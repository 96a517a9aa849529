"""The music library: MIDI in and out (`midi`), the performance encoding (`performance_encoding`), Yang & Lerch's
features (`features`), piano rolls (`pianoroll`, `plot`) and audio (`audio`). It knows nothing of the stages, their
settings or their folders, and nothing here imports a submodule, so each user depends on exactly what it uses."""
