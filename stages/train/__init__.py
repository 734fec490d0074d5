"""Heads and banks: stage-1 training (:mod:`.stage`), the bank dump (:mod:`.dump`), stage-2
training over bank windows (:mod:`.bank`, :mod:`.window`), cRT (:mod:`.rebalance`), and what they
share — the training loop (:mod:`.loop`), batches from the store (:mod:`.data`), recipes
(:mod:`.recipes`) and a trained run on disk (:mod:`.run`). docs/design.md §1."""
