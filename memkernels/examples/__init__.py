"""Examples built on memkernels: ``python -m memkernels.examples.lm`` (a small
language model with memory layers against dense models of equal and twice the
FLOPs, on a synthetic biography corpus)."""
