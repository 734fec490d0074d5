"""The report stage (:mod:`.stage`) and its figures (:mod:`.plots`). docs/design.md §1."""
