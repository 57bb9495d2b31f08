{{/* Names, labels, and the QBFT genesis extraData computed from the validators. */}}

{{- define "besu.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "besu.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "besu.selectorLabels" -}}
app.kubernetes.io/name: {{ include "besu.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: validator
{{- end }}

{{- define "besu.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "besu.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vre
{{- end }}

{{- define "besu.headless" -}}
{{- printf "%s-headless" (include "besu.fullname" .) }}
{{- end }}

{{- define "besu.nodeKeys" -}}
{{- default (printf "%s-node-keys" (include "besu.fullname" .)) .Values.nodeKeys.existingSecret }}
{{- end }}

{{/* enode URLs of all validators, by their stable pod DNS names. */}}
{{- define "besu.enodes" -}}
{{- $root := . }}
{{- $enodes := list }}
{{- range $i, $v := .Values.validators }}
{{- $host := printf "%s-%d.%s.%s.svc.%s" (include "besu.fullname" $root) $i (include "besu.headless" $root) $root.Release.Namespace $root.Values.clusterDomain }}
{{- $enodes = append $enodes (printf "enode://%s@%s:%v" (lower (trimPrefix "0x" $v.publicKey)) $host $root.Values.p2p.port) }}
{{- end }}
{{- toJson $enodes }}
{{- end }}

{{/* RLP header of a list whose payload is n bytes. */}}
{{- define "besu.rlpListHeader" -}}
{{- $n := int . }}
{{- if le $n 55 }}
{{- printf "%02x" (add 192 $n) }}
{{- else if lt $n 256 }}
{{- printf "f8%02x" $n }}
{{- else }}
{{- printf "f9%04x" $n }}
{{- end }}
{{- end }}

{{/* QBFT genesis extraData: RLP([32 zero bytes, [validator addresses], [], 0, []]). */}}
{{- define "besu.extraData" -}}
{{- if .Values.extraData }}
{{- .Values.extraData }}
{{- else }}
{{- $addresses := "" }}
{{- range .Values.validators }}
{{- $addresses = printf "%s94%s" $addresses (lower (trimPrefix "0x" .address)) }}
{{- end }}
{{- $validators := printf "%s%s" (include "besu.rlpListHeader" (div (len $addresses) 2)) $addresses }}
{{- $body := printf "a0%s%sc080c0" (repeat 64 "0") $validators }}
{{- printf "0x%s%s" (include "besu.rlpListHeader" (div (len $body) 2)) $body }}
{{- end }}
{{- end }}
