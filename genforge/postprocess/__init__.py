"""Post-processing: what happens to generated samples before anyone uses them.

``filtering``: discriminator rejection sampling, evaluator confidence, de-duplication; ``memorization``: are samples
copies of training examples? (Provenance metadata and the ledger are written with the outputs:
:mod:`genforge.generation.provenance`.)
"""
