"""Post-processing: what happens to generated images before anyone uses them.

``provenance``: PNG metadata and a signed ledger of every image genforge writes, and verification.
"""
