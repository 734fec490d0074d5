"""Predictions after training: test-time augmentation (:mod:`.tta`, the ``predict`` stage) and
ensembling of runs (:mod:`.ensemble`). docs/design.md §1."""
