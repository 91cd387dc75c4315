"""The kubetune operator (imported as `kubetune.operator`): TuningJob → GPU Job, status, metrics."""
