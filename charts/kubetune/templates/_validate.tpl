{{/* Checks that values.schema.json cannot express; each failure says what to change.
     Included once, from deployment.yaml. */}}
{{- define "kubetune.validate" -}}
{{- $election := .Values.operator.leaderElection }}
{{- if and (gt (int .Values.replicaCount) 1) (not $election.enabled) }}
{{- fail (printf "replicaCount is %d but operator.leaderElection.enabled is false: replicas would act on the same TuningJobs at once. Enable leader election or set replicaCount to 1." (int .Values.replicaCount)) }}
{{- end }}
{{- if $election.enabled }}
{{- if not (and (lt (float64 $election.retryPeriodSeconds) (float64 $election.renewDeadlineSeconds)) (lt (float64 $election.renewDeadlineSeconds) (float64 $election.leaseDurationSeconds))) }}
{{- fail (printf "operator.leaderElection: retryPeriodSeconds (%v) < renewDeadlineSeconds (%v) < leaseDurationSeconds (%v) must hold." $election.retryPeriodSeconds $election.renewDeadlineSeconds $election.leaseDurationSeconds) }}
{{- end }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.operator.metricsPort) }}
{{- fail "serviceMonitor.enabled needs the operator's metrics endpoint: set operator.metricsPort to a port, not 0." }}
{{- end }}
{{- /* Watched namespaces must exist: a RoleBinding cannot be created in a missing one.
       `lookup` sees the cluster only during install/upgrade (and --dry-run=server); the
       release namespace always exists then, so an empty answer for it means there is
       no cluster to ask (helm template) and the check is left to the API server. */}}
{{- if and .Values.watchNamespaces (lookup "v1" "Namespace" "" .Release.Namespace) }}
{{- range .Values.watchNamespaces }}
{{- if not (lookup "v1" "Namespace" "" .) }}
{{- fail (printf "watchNamespaces: namespace %q does not exist. Create it first (kubectl create namespace %s) or remove it from watchNamespaces." . .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
