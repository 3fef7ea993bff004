"""Security: encryption at rest (``crypto``) and differential privacy (``privacy``).

Each module is imported on its own, so a user without the optional extras (``cryptography``, ``opacus``)
can still train and sample unencrypted, non-private models.
"""
