"""Security commands: ``genforge security`` (key files, rotation, encrypting and decrypting files).

The mechanisms live where they act: encryption at rest in :mod:`genforge.crypto` (bottom layer, used by data,
model files and checkpoints), differential privacy in :mod:`genforge.training.privacy` (it is training code),
API keys, roles and the audit log in :mod:`genforge.serve`.
"""
