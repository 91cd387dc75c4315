"""The kubetune trainer (imported as `kubetune.trainer`): data, QLoRA training, export.

Importing this package must stay cheap: torch and transformers are imported by the
modules that need them, not here.
"""
