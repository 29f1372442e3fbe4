"""IVR flows: files a call-center team edits, validated, linted, and run by the engine."""
