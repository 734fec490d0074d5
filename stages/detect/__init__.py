"""Person boxes: the detect stage (:mod:`.stage`), detector fine-tuning (:mod:`.training`) and the
tracker that links boxes into identities (:mod:`.track`). docs/design.md §1."""
