"""Applications built on the generative models: inspection (anomaly detection) and the repair, class-transfer
and augmentation tools. Each is its own module; nothing heavy is imported here."""
