"""The data pipeline: load → format → redact → template → mask → tokenize → pack."""
