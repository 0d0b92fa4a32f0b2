{{/* Labels on every object of the release. */}}
{{- define "minimesh.labels" -}}
app.kubernetes.io/name: minimesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The injector's pods. */}}
{{- define "minimesh.selector" -}}
app.kubernetes.io/name: minimesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: injector
{{- end }}

{{- define "minimesh.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The injector runs in the cluster unless webhook.url points elsewhere. */}}
{{- define "minimesh.inCluster" -}}
{{- if not .Values.webhook.url }}true{{ end }}
{{- end }}

{{- define "minimesh.tlsSecret" -}}
{{- if eq .Values.tls.mode "secret" }}{{ .Values.tls.secretName }}{{ else }}minimesh-injector-tls{{ end }}
{{- end }}

{{- define "minimesh.restricted" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}
