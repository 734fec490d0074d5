"""Tools that read a work root but are not pipeline stages: ``bankflow infer`` (:mod:`.infer`),
attention maps (:mod:`.attention`), annotated videos (:mod:`.annotate`) and checkpoint
inspection (:mod:`.checkpoint_inspect`)."""
