{{/* Names and labels of one desktop. */}}

{{- define "desktop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* One release is one desktop: the release name is its name. */}}
{{- define "desktop.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 55 | trimSuffix "-" }}
{{- end }}

{{- define "desktop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "desktop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* vre.io/workload=desktop is what the platform's NetworkPolicies select. */}}
{{- define "desktop.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "desktop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vre
vre.io/workload: desktop
vre.io/desktop: {{ .Values.desktop.id | quote }}
vre.io/owner: {{ .Values.desktop.owner | quote }}
{{- end }}

{{- define "desktop.homeClaim" -}}
{{- default (printf "%s-home" (include "desktop.fullname" .)) .Values.home.existingClaim }}
{{- end }}

{{- define "desktop.vncSecret" -}}
{{- default (printf "%s-vnc" (include "desktop.fullname" .)) .Values.vnc.existingSecret }}
{{- end }}

{{/* The portal pods, as a NetworkPolicy peer. */}}
{{- define "desktop.portalPeer" -}}
namespaceSelector:
  matchLabels:
    kubernetes.io/metadata.name: {{ .Values.platform.namespace }}
podSelector:
  matchLabels:
    {{- toYaml .Values.platform.portalSelector | nindent 4 }}
{{- end }}
