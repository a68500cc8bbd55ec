{{/* The release's full name: the release name, with the chart's unless it has it. */}}
{{- define "rampart.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "rampart.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rampart.labels" -}}
{{ include "rampart.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The namespaces `--kubernetes` watches: gitops.namespaces, else rbac.namespaces, else the release's. */}}
{{- define "rampart.watched" -}}
{{- .Values.gitops.namespaces | default .Values.rbac.namespaces | default (list .Release.Namespace) | join "," -}}
{{- end -}}

{{/*
The namespaces that get a Role: where the released services live and, with gitops,
every namespace watched (a watched namespace without one is Forbidden to list).
*/}}
{{- define "rampart.roleNamespaces" -}}
{{- $released := .Values.rbac.namespaces | default (list .Release.Namespace) -}}
{{- $watched := list -}}
{{- if .Values.gitops.enabled -}}
{{- $watched = splitList "," (include "rampart.watched" .) -}}
{{- end -}}
{{- concat $released $watched | uniq | join "," -}}
{{- end -}}

{{- define "rampart.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rampart.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Refuses values that would install something that cannot work, before anything is
applied: several replicas on SQLite (one server per SQLite store: a second one exits,
and the volume is ReadWriteOnce), PostgreSQL without its Secret, unknown switches.
*/}}
{{- define "rampart.validate" -}}
{{- if not (has .Values.store.type (list "sqlite" "postgres")) -}}
{{- fail (printf "store.type must be sqlite or postgres, not %q" .Values.store.type) -}}
{{- end -}}
{{- if and (eq .Values.store.type "sqlite") (gt (int .Values.replicas) 1) -}}
{{- fail (printf "replicas: %d needs store.type postgres: one rampart serve runs on a SQLite store at a time (set store.type=postgres and store.postgres.existingSecret, or replicas=1)" (int .Values.replicas)) -}}
{{- end -}}
{{- if and (eq .Values.store.type "postgres") (not .Values.store.postgres.existingSecret) -}}
{{- fail "store.type postgres needs store.postgres.existingSecret: a Secret whose key store.postgres.key holds the postgres:// URL" -}}
{{- end -}}
{{- if lt (int .Values.replicas) 1 -}}
{{- fail "replicas must be at least 1" -}}
{{- end -}}
{{- if not (has .Values.rbac.scope (list "namespace" "cluster")) -}}
{{- fail (printf "rbac.scope must be namespace or cluster, not %q" .Values.rbac.scope) -}}
{{- end -}}
{{- range .Values.rbac.trafficModes -}}
{{- if not (has . (list "replica_ratio" "service_selector" "http_route")) -}}
{{- fail (printf "rbac.trafficModes: %q is no traffic mode (replica_ratio, service_selector, http_route)" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The rules of what the Kubernetes adapter calls (crates/kubernetes/src/api.rs), per
traffic mode; docs/kubernetes.md#rbac explains each. Nothing else: no pods, events,
leases (the leader lease is a row in PostgreSQL) or secrets.
*/}}
{{- define "rampart.rules" -}}
{{- $modes := .Values.rbac.trafficModes -}}
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, create, patch]
- apiGroups: [apps]
  resources: [deployments]
  {{- with .Values.rbac.canaryDeployments }}
  resourceNames: {{ toJson . }}
  {{- end }}
  verbs: [delete]
- apiGroups: [apps]
  resources: [deployments/scale]
  verbs: [patch]
{{- if has "http_route" $modes }}
- apiGroups: [""]
  resources: [services]
  verbs: [get, create, patch]
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, patch]
{{- else if has "service_selector" $modes }}
- apiGroups: [""]
  resources: [services]
  verbs: [get, patch]
{{- end }}
{{- if has "replica_ratio" $modes }}
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list]
{{- end }}
{{- if .Values.gitops.enabled }}
# serve --kubernetes: finds the opted-in Deployments and reads their policies.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
{{- end }}
{{- end -}}
