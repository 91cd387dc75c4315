"""`kubetune status/logs/wait/plot`: following TuningJobs as a person, through the user's kubeconfig.

`view` and `curves` are pure (status → text, metrics.jsonl → series, sparkline, PNG);
`cluster` is the only part that talks to the API server (the `client` extra:
kubernetes, and boto3 for s3:// metrics). Matplotlib is needed only for PNGs (the
`plot` extra); the text sparkline needs nothing.
"""
