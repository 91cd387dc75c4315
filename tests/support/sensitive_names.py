"""What security linters take for a credential in a container's environment.

The patterns are the tools' own defaults, copied from their sources:

- kube-linter `env-var-secret` (pkg/builtinchecks/yamls/env-var-secret.yaml): a name
  matching `(?i).*secret.*` with a literal (non-empty) value;
- polaris `sensitiveContainerEnvVar` (checks/sensitiveContainerEnvVar.yaml, rated
  danger): names matching any of the regexes below, whatever the value;
- kubescape `rule-credentials-in-env-var` (default-config-inputs.json
  `sensitiveKeyNames`): a lower-cased name containing any of the words below, with a
  literal value.

None of them can be built here: kube-linter's module host (golang.stackrox.io) is not
on the Go module proxy's allowlist, polaris' module was not found on it, and
kubescape's rules are Rego run by a large CLI. So the tests apply these patterns.
"""

from __future__ import annotations

import re

KUBE_LINTER_ENV_VAR_SECRET = [r"(?i).*secret.*"]
POLARIS_SENSITIVE_CONTAINER_ENV_VAR = [
    r"(?i)^AWS_SECRET_ACCESS_KEY$",
    r"(?i)^GOOGLE_APPLICATION_CREDENTIALS$",
    r"(?i)^AZURE_.+KEY$",
    r"(?i)^OCI_CLI_KEY_CONTENT$",
    r"(?i)password",
    r"(?i)token",
    r"(?i)bearer",
    r"(?i)secret",
]
KUBESCAPE_SENSITIVE_KEY_NAMES = [
    "aws_access_key_id",
    "aws_secret_access_key",
    "azure_batchai_storage_account",
    "azure_batchai_storage_key",
    "azure_batch_account",
    "azure_batch_key",
    "secret",
    "key",
    "password",
    "pwd",
    "token",
    "jwt",
    "bearer",
    "credential",
]


def flagged_by(name: str) -> list[str]:
    """The linters that would flag an environment variable `name` with a literal value."""
    tools = []
    if any(re.search(p, name) for p in KUBE_LINTER_ENV_VAR_SECRET):
        tools.append("kube-linter env-var-secret")
    if any(re.search(p, name) for p in POLARIS_SENSITIVE_CONTAINER_ENV_VAR):
        tools.append("polaris sensitiveContainerEnvVar")
    if any(word in name.lower() for word in KUBESCAPE_SENSITIVE_KEY_NAMES):
        tools.append("kubescape rule-credentials-in-env-var")
    return tools
