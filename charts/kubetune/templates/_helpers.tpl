{{/* Names ------------------------------------------------------------------------ */}}

{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or the release name alone when it already holds the chart name. */}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false: name the existing ServiceAccount the operator runs as" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubetune.leaseName" -}}
{{- default (include "kubetune.fullname" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------- */}}

{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "kubetune.commonLabels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of the operator's objects. */}}
{{- define "kubetune.labels" -}}
{{ include "kubetune.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of the training pods, as the operator's builders set them
     (kubetune/operator/builders.py `labels`); the PodMonitor selects on them. */}}
{{- define "kubetune.trainerSelectorLabels" -}}
app.kubernetes.io/name: kubetune-trainer
app.kubernetes.io/managed-by: kubetune-operator
{{- end }}

{{/* Images ----------------------------------------------------------------------- */}}

{{/* An image reference from {repository, tag, digest}; the tag defaults to appVersion.
     global.imageRegistry replaces the repository's registry (its first part, when that
     looks like a host: it has a dot or a port, or is localhost), or is put before it. */}}
{{- define "kubetune.image" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- $repository := $image.repository }}
{{- with (($root.Values.global | default dict).imageRegistry) }}
{{- $parts := splitList "/" $repository }}
{{- $first := first $parts }}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) }}
{{- $repository = join "/" (rest $parts) }}
{{- end }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s@%s" $repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* Names of pull Secrets given as `- name: x` (the pod-spec form) or as plain names. */}}
{{- define "kubetune.pullSecretNames" -}}
{{- $names := list }}
{{- range . }}
{{- if kindIs "map" . }}{{ $names = append $names .name }}{{ else }}{{ $names = append $names . }}{{ end }}
{{- end }}
{{- join "," $names }}
{{- end }}

{{/* RBAC ------------------------------------------------------------------------- */}}

{{/* What the operator does in a namespace it watches, and so all it may do there.
     Each rule names the code that needs it; tests/integration/test_chart_install.py
     runs the operator as the chart's ServiceAccount and checks, from the API server's
     answers to it, that every verb granted here is used and none is refused. */}}
{{- define "kubetune.operatorRules" -}}
# kopf lists and watches TuningJobs (its index of them; operator/main.py).
- apiGroups: ["kubetune.dev"]
  resources: ["tuningjobs"]
  verbs: ["list", "watch"]
# Status is the operator's output (operator/kubeapi.py patch_tuningjob_status).
- apiGroups: ["kubetune.dev"]
  resources: ["tuningjobs/status"]
  verbs: ["patch"]
# The Jobs are created with a blockOwnerDeletion ownerReference to their TuningJob;
# where the OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift),
# that takes update on the owner's finalizers.
- apiGroups: ["kubetune.dev"]
  resources: ["tuningjobs/finalizers"]
  verbs: ["update"]
# One Job per TuningJob: created, read back after a conflict, suspended or resumed
# (operator/kubeapi.py), watched for its status (operator/main.py). Never deleted:
# the garbage collector removes it with its TuningJob.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The training pods tell why a Job waits or failed (image pull, unschedulable, exit
# code) and where its metrics are (pod IP): read from a watch, never changed.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Phase transitions and failures as Events on the TuningJob (operator/events.py).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* The trainer's metrics port number (kubetune/api/contract.py METRICS_PORT). */}}
{{- define "kubetune.trainerMetricsPort" -}}
9400
{{- end }}
