"""A trial, one job per module: :mod:`.data`, :mod:`.parent`, :mod:`.masking`, :mod:`.objectives`,
:mod:`.evaluation`, :mod:`.outputs`, :mod:`.state` (checkpoint files, seed streams), :mod:`.trial`."""
