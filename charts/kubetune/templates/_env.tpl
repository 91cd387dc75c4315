{{/* The operator's settings (operator/settings.py: KUBETUNE_OPERATOR_<FIELD>) from the
     values. Unset optional values are left out, so the operator's own default (None)
     applies. tests/unit/test_chart_render.py checks these names against the Settings
     class: a setting added there and not here fails it. */}}
{{- define "kubetune.operatorEnv" -}}
{{- $op := .Values.operator }}
{{- $trainer := $op.trainer }}
{{- $election := $op.leaderElection }}
{{- $env := dict }}
{{- if .Values.watchNamespaces }}
{{- $_ := set $env "NAMESPACES" (join "," .Values.watchNamespaces) }}
{{- end }}
{{- $_ := set $env "TRAINER_IMAGE" (include "kubetune.image" (list $trainer.image .)) }}
{{- with $trainer.image.pullPolicy }}{{ $_ := set $env "TRAINER_IMAGE_PULL_POLICY" . }}{{ end }}
{{- with $trainer.imagePullSecrets }}{{ $_ := set $env "IMAGE_PULL_AUTH_REFS" (include "kubetune.pullSecretNames" .) }}{{ end }}
{{- with $trainer.env }}{{ $_ := set $env "DEFAULT_ENV" (toJson .) }}{{ end }}
{{- with $trainer.podLabels }}{{ $_ := set $env "DEFAULT_POD_LABELS" (toJson .) }}{{ end }}
{{- with $trainer.podAnnotations }}{{ $_ := set $env "DEFAULT_POD_ANNOTATIONS" (toJson .) }}{{ end }}
{{- with $trainer.nodeSelector }}{{ $_ := set $env "DEFAULT_NODE_SELECTOR" (toJson .) }}{{ end }}
{{- with $trainer.tolerations }}{{ $_ := set $env "DEFAULT_TOLERATIONS" (toJson .) }}{{ end }}
{{- if $trainer.scrapeAnnotations }}{{ $_ := set $env "POD_SCRAPE_ANNOTATIONS" "true" }}{{ end }}
{{- $_ := set $env "VALIDATE_DATA" $op.validation.enabled }}
{{- $_ := set $env "VALIDATE_CPU" $op.validation.cpu }}
{{- $_ := set $env "VALIDATE_MEMORY" $op.validation.memory }}
{{- $_ := set $env "VALIDATE_SCRATCH_SIZE" $op.validation.scratchSize }}
{{- $_ := set $env "VALIDATE_DEADLINE_SECONDS" $op.validation.deadlineSeconds }}
{{- with $op.allowedTrainerImages }}{{ $_ := set $env "ALLOWED_TRAINER_IMAGES" (join "," .) }}{{ end }}
{{- with $op.allowedServiceAccounts }}{{ $_ := set $env "ALLOWED_SERVICE_ACCOUNTS" (join "," .) }}{{ end }}
{{- $_ := set $env "RUN_AS_USER" $trainer.runAsUser }}
{{- $_ := set $env "RUN_AS_GROUP" $trainer.runAsGroup }}
{{- $_ := set $env "FS_GROUP" $trainer.fsGroup }}
{{- $_ := set $env "TERMINATION_GRACE_PERIOD_SECONDS" $trainer.terminationGracePeriodSeconds }}
{{- $_ := set $env "GPU_RESOURCE_NAME" $op.gpu.resourceName }}
{{- $_ := set $env "GPU_NODE_SELECTOR" ($op.gpu.nodeSelector | default dict | toJson) }}
{{- $_ := set $env "GPU_TOLERATIONS" ($op.gpu.tolerations | default list | toJson) }}
{{- $_ := set $env "DEFAULT_CPU" $op.defaults.cpu }}
{{- $_ := set $env "DEFAULT_MEMORY" $op.defaults.memory }}
{{- $_ := set $env "DEFAULT_EPHEMERAL_STORAGE" $op.defaults.ephemeralStorage }}
{{- $_ := set $env "DEFAULT_SCRATCH_SIZE" $op.defaults.scratchSize }}
{{- $_ := set $env "DEFAULT_SHM_SIZE" $op.defaults.shmSize }}
{{- with $op.s3.endpoint }}{{ $_ := set $env "S3_ENDPOINT" . }}{{ end }}
{{- with $op.s3.credentialsSecret }}{{ $_ := set $env "S3_AUTH_REF" . }}{{ end }}
{{- $_ := set $env "WORKERS" $op.workers }}
{{- $_ := set $env "PROGRESS_INTERVAL_SECONDS" $op.progressIntervalSeconds }}
{{- $_ := set $env "PROGRESS_TIMEOUT_SECONDS" $op.progressTimeoutSeconds }}
{{- $_ := set $env "RESYNC_SECONDS" $op.resyncSeconds }}
{{- $_ := set $env "METRICS_PORT" $op.metricsPort }}
{{- $_ := set $env "HEALTH_PORT" $op.healthPort }}
{{- $_ := set $env "LEADER_ELECTION" $election.enabled }}
{{- $_ := set $env "LEASE_NAME" (include "kubetune.leaseName" .) }}
{{- $_ := set $env "LEASE_NAMESPACE" .Release.Namespace }}
{{- $_ := set $env "LEASE_DURATION_SECONDS" $election.leaseDurationSeconds }}
{{- $_ := set $env "LEASE_RENEW_DEADLINE_SECONDS" $election.renewDeadlineSeconds }}
{{- $_ := set $env "LEASE_RETRY_SECONDS" $election.retryPeriodSeconds }}
{{- $_ := set $env "LOG_FORMAT" $op.logFormat }}
{{- range $name := keys $env | sortAlpha }}
- name: KUBETUNE_OPERATOR_{{ $name }}
  value: {{ get $env $name | toString | quote }}
{{- end }}
{{- end }}
