{{/* Names, labels and the pieces every pod of the platform shares. */}}

{{- define "vre.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name, at most 50 characters so component suffixes fit in 63. */}}
{{- define "vre.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vre.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of one component's objects: (dict "root" $ "component" "portal") */}}
{{- define "vre.componentName" -}}
{{- printf "%s-%s" (include "vre.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vre.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vre.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "vre.labels" -}}
helm.sh/chart: {{ include "vre.chart" .root }}
{{ include "vre.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: vre
{{- end }}

{{- define "vre.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "vre.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vre.componentName" (dict "root" . "component" "portal")) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret with the platform's keys (see values.yaml: secrets). */}}
{{- define "vre.secretsName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- default (printf "%s-secrets" (include "vre.fullname" .)) .Values.secrets.generatedName }}
{{- end }}
{{- end }}

{{/* The Secret this chart makes for connection URLs (database, Elasticsearch). */}}
{{- define "vre.connectionsName" -}}
{{- printf "%s-connections" (include "vre.fullname" .) }}
{{- end }}

{{- define "vre.publicUrl" -}}
{{- if .Values.publicUrl }}
{{- .Values.publicUrl | trimSuffix "/" }}
{{- else }}
{{- printf "%s://%s" (ternary "https" "http" (and .Values.ingress.enabled .Values.ingress.tls.enabled)) (required "ingress.host or publicUrl is required" .Values.ingress.host) }}
{{- end }}
{{- end }}

{{/* In-cluster URL of a component: (dict "root" $ "component" "tracer" "port" 8602) */}}
{{- define "vre.internalUrl" -}}
{{- printf "http://%s.%s.svc:%v" (include "vre.componentName" .) .root.Release.Namespace .port }}
{{- end }}

{{/* Settings that are secret: never in a ConfigMap, never in config.extra. */}}
{{- define "vre.secretSettings" -}}
VRE_SECRET_KEY VRE_SERVICE_SECRET VRE_DATABASE_URL VRE_CHAIN_PRIVATE_KEY VRE_ADMIN_PASSWORD VRE_ELASTICSEARCH_URL VRE_OIDC_CLIENT_SECRET
{{- end }}

{{/* VRE_DATABASE_URL from the connections Secret or the operator's. */}}
{{- define "vre.databaseEnv" -}}
- name: VRE_DATABASE_URL
  valueFrom:
    secretKeyRef:
{{- if .Values.database.existingSecret }}
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
{{- else }}
      name: {{ include "vre.connectionsName" . }}
      key: database-url
{{- end }}
{{- end }}

{{/* One key of the platform Secret as an environment variable: (dict "root" $ "env" "X" "key" "y") */}}
{{- define "vre.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ include "vre.secretsName" .root }}
      key: {{ .key }}
{{- end }}

{{/* The writable places of a pod whose root filesystem is read-only. */}}
{{- define "vre.scratchVolumes" -}}
- name: home
  emptyDir: {}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 64Mi
{{- end }}

{{- define "vre.scratchMounts" -}}
- name: home
  mountPath: /var/lib/vre
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* One file of the platform Secret as a read-only volume: (dict "root" $ "name" "v" "key" "k" "path" "p") */}}
{{- define "vre.keyVolume" -}}
- name: {{ .name }}
  secret:
    secretName: {{ include "vre.secretsName" .root }}
    defaultMode: 0440
    items:
      - key: {{ .key }}
        path: {{ .path }}
{{- end }}

{{/* Pod-level fields every platform pod shares. */}}
{{- define "vre.podCommon" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Scheduling fields of one component: (dict "values" .Values.portal) */}}
{{- define "vre.scheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* HTTP probes on the platform's /readyz and /healthz. */}}
{{- define "vre.httpProbes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 5
  failureThreshold: 24
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
{{- end }}

{{/* Checksum of the plain settings, so a change rolls the pods. */}}
{{- define "vre.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end }}

{{/* The dataset service's claim on the repository. */}}
{{- define "vre.repositoryClaim" -}}
{{- default (include "vre.componentName" (dict "root" . "component" "repository")) .Values.repository.existingClaim }}
{{- end }}

{{/* One egress rule to destinations outside the release (values: networkPolicy.egress.*). */}}
{{- define "vre.egressRule" -}}
- to:
    {{- toYaml .to | nindent 4 }}
  ports:
    {{- toYaml .ports | nindent 4 }}
{{- end }}
