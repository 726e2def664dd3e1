{{/* Names and labels. */}}
{{- define "conveyor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "conveyor.fullname" -}}
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

{{- define "conveyor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "conveyor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "conveyor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "conveyor.labels" -}}
helm.sh/chart: {{ include "conveyor.chart" . }}
{{ include "conveyor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "conveyor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "conveyor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "conveyor.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Environment variable naming: the same rule as streams.settings.env_name, i.e.
the prefix, then each path segment upper-cased, joined by the delimiter:
config.jobs.asset_process.concurrency -> CONVEYOR_JOBS__ASSET_PROCESS__CONCURRENCY.
tests/unit/test_deploy_config.py reads these two definitions.
*/}}
{{- define "conveyor.envPrefix" -}}CONVEYOR_{{- end }}
{{- define "conveyor.envDelimiter" -}}__{{- end }}

{{/*
A value as the settings parse it from the environment: strings as they are,
lists comma-separated, numbers and booleans as JSON (toJson prints 4194304, not
the 4.194304e+06 that a float64 would print as a string).
*/}}
{{- define "conveyor.envValue" -}}
{{- if kindIs "string" . }}{{ . }}
{{- else if kindIs "slice" . }}{{ join "," . }}
{{- else }}{{ toJson . }}
{{- end }}
{{- end }}

{{/*
One env entry per leaf of a config map, recursing into nested maps.
Input: dict "config" <map> "name" <name so far, prefix included>.
Null leaves are skipped so that the code's default applies.
*/}}
{{- define "conveyor.configEnv" -}}
{{- $name := .name }}
{{- range $key, $value := .config }}
{{- $envName := printf "%s%s" $name (upper $key) }}
{{- if kindIs "map" $value }}
{{- include "conveyor.configEnv" (dict "config" $value "name" (printf "%s%s" $envName (include "conveyor.envDelimiter" $))) }}
{{- else if not (kindIs "invalid" $value) }}
- name: {{ $envName }}
  value: {{ include "conveyor.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
One env entry per secret reference (secrets.<group>.<field>: {name, key}),
named like the config entries. References with an empty name are skipped
unless marked required.
Input: dict "secrets" <map> "name" <name so far> "path" <dotted path so far>.
*/}}
{{- define "conveyor.secretEnv" -}}
{{- $name := .name }}
{{- $path := .path }}
{{- range $key, $value := .secrets }}
{{- $envName := printf "%s%s" $name (upper $key) }}
{{- $valuePath := printf "%s.%s" $path $key }}
{{- if hasKey $value "key" }}
{{- if $value.name }}
- name: {{ $envName }}
  valueFrom:
    secretKeyRef:
      name: {{ $value.name | quote }}
      key: {{ $value.key | quote }}
{{- else if $value.required }}
{{- fail (printf "%s.name must name an existing Secret (it sets %s)" $valuePath $envName) }}
{{- end }}
{{- else }}
{{- include "conveyor.secretEnv" (dict "secrets" $value "name" (printf "%s%s" $envName (include "conveyor.envDelimiter" $)) "path" $valuePath) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The whole environment of a Conveyor container: config, then secrets. */}}
{{- define "conveyor.env" -}}
{{- $prefix := include "conveyor.envPrefix" . }}
{{- include "conveyor.configEnv" (dict "config" .Values.config "name" $prefix) }}
{{- include "conveyor.secretEnv" (dict "secrets" .Values.secrets "name" $prefix "path" "secrets") }}
{{- end }}

{{/* Refuse a grace period that could kill a worker before its drain ends. */}}
{{- define "conveyor.checkGracePeriod" -}}
{{- $worker := .Values.config.worker }}
{{- $bound := addf $worker.drain_timeout_s $worker.hard_exit_after_s }}
{{- if le (float64 .Values.terminationGracePeriodSeconds) $bound }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be greater than config.worker.drain_timeout_s + config.worker.hard_exit_after_s (%v)" .Values.terminationGracePeriodSeconds $bound) }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by the worker and the hook Jobs. */}}
{{- define "conveyor.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
