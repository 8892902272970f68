"""The algorithms: Antibody stages 1 and 2 and their baselines, in torch/transformers/peft.

Import from the submodules (``defense.finetune.fit``, ``defense.align.align``,
``defense.config.FinetuneConfig``...); this package imports nothing heavy on its own.
"""
