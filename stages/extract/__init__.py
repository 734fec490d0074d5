"""Backbone features into the Zarr store: backbone fine-tuning (:mod:`.finetune`), the extract
stage (:mod:`.stage`), its video decoding (:mod:`.video`) and worker processes (:mod:`.workers`).
docs/design.md §1."""
