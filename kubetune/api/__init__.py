"""The TuningJob API (v1alpha1) and the operator/trainer contract; no torch, no kopf."""
