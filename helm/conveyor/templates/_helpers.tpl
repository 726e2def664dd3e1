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

{{/* The pods of one worker group. Input: dict "root" $ "group" <group>. */}}
{{- define "conveyor.workerSelectorLabels" -}}
{{ include "conveyor.selectorLabels" .root }}
app.kubernetes.io/component: worker
conveyor/worker-group: {{ .group.name }}
{{- end }}

{{- define "conveyor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "conveyor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository[:tag]@digest when a digest pins it. */}}
{{- define "conveyor.image" -}}
{{- $image := .Values.image }}
{{- if $image.digest }}
{{- if $image.tag }}
{{- printf "%s:%s@%s" $image.repository $image.tag $image.digest }}
{{- else }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- end }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "conveyor.configMapName" -}}
{{- include "conveyor.fullname" . }}-config
{{- end }}

{{/*
Environment variable naming: the same rule as streams.settings.env_name, i.e.
the prefix, then each path segment upper-cased, joined by the delimiter:
config.jobs.asset_process.concurrency -> CONVEYOR_JOBS__ASSET_PROCESS__CONCURRENCY.
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
Collects one variable per leaf of a config map into .out (name -> value),
recursing into nested maps; later calls override earlier ones. Null leaves are
skipped, so the code's default applies.
Input: dict "out" <dict> "config" <map> "name" <name so far, prefix included>.
*/}}
{{- define "conveyor.collectEnv" -}}
{{- $out := .out }}
{{- $name := .name }}
{{- range $key, $value := .config }}
{{- $envName := printf "%s%s" $name (upper $key) }}
{{- if kindIs "map" $value }}
{{- include "conveyor.collectEnv" (dict "out" $out "config" $value "name" (printf "%s%s" $envName (include "conveyor.envDelimiter" $))) }}
{{- else if not (kindIs "invalid" $value) }}
{{- $_ := set $out $envName (include "conveyor.envValue" $value) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The shared configuration (config:) as a JSON object name -> value. */}}
{{- define "conveyor.configEnv" -}}
{{- $out := dict }}
{{- include "conveyor.collectEnv" (dict "out" $out "config" .Values.config "name" (include "conveyor.envPrefix" .)) }}
{{- toJson $out }}
{{- end }}

{{/* env entries from a name -> value map, in name order. */}}
{{- define "conveyor.envEntries" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}

{{/*
One env entry per secret setting (secrets.<group>.<field>: {name, key}),
named like the config entries. The entry's own Secret `name` wins; else
existingSecret (optional: true unless the setting is required); else the
setting is left unset, and a required one fails the render.
Input: dict "root" $ "secrets" <map> "name" <name so far> "path" <dotted path so far>.
*/}}
{{- define "conveyor.secretEnv" -}}
{{- $root := .root }}
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
{{- else if $root.Values.existingSecret }}
- name: {{ $envName }}
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.existingSecret | quote }}
      key: {{ $value.key | quote }}
      {{- if not $value.required }}
      optional: true
      {{- end }}
{{- else if $value.required }}
{{- fail (printf "set existingSecret or %s.name: the Secret holding %s (required)" $valuePath $envName) }}
{{- end }}
{{- else }}
{{- include "conveyor.secretEnv" (dict "root" $root "secrets" $value "name" (printf "%s%s" $envName (include "conveyor.envDelimiter" $)) "path" $valuePath) }}
{{- end }}
{{- end }}
{{- end }}

{{- /* Every secret setting the workers use: all but the console's. */}}
{{- define "conveyor.secretEnvAll" -}}
{{- include "conveyor.secretEnv" (dict "root" . "secrets" (omit .Values.secrets "console") "name" (include "conveyor.envPrefix" .) "path" "secrets") }}
{{- end }}

{{- /* The secret settings of the listed groups only. Input: dict "root" $ "groups" <list>. */}}
{{- define "conveyor.secretEnvGroups" -}}
{{- $root := .root -}}
{{- $secrets := dict -}}
{{- range .groups }}{{- $_ := set $secrets . (index $root.Values.secrets .) }}{{- end -}}
{{- include "conveyor.secretEnv" (dict "root" $root "secrets" $secrets "name" (include "conveyor.envPrefix" $root) "path" "secrets") }}
{{- end }}

{{/*
Merges map .src into map .dst in place, recursing into maps present in both
(sprig's mergeOverwrite would not let false or 0 override a default).
*/}}
{{- define "conveyor.merge" -}}
{{- $dst := .dst }}
{{- range $key, $value := .src }}
{{- if and (kindIs "map" $value) (kindIs "map" (get $dst $key)) }}
{{- include "conveyor.merge" (dict "dst" (get $dst $key) "src" $value) }}
{{- else }}
{{- $_ := set $dst $key $value }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The worker groups as JSON {"groups": [...]}, each with its effective settings:
name, deployment, consumerGroup, jobTypes, dlqMirror, replicas, resources,
autoscaling (merged over the defaults), pod placement and metadata, and env:
the variables this group sets over the shared ConfigMap. Without workerGroups,
one group "default" runs every job type as the Deployment <fullname>.
*/}}
{{- define "conveyor.groups" -}}
{{- $root := . }}
{{- $config := .Values.config }}
{{- $fullname := include "conveyor.fullname" . }}
{{- $prefix := include "conveyor.envPrefix" . }}
{{- $delimiter := include "conveyor.envDelimiter" . }}
{{- $specs := .Values.workerGroups }}
{{- if not $specs }}
{{- $all := list }}
{{- range $job, $policy := $config.jobs }}
{{- if $policy.enabled }}{{ $all = append $all $job }}{{ end }}
{{- end }}
{{- $specs = dict "default" (dict "jobTypes" $all "dlqMirror" $config.dlq_mirror.enabled "replicas" .Values.replicaCount "implicit" true) }}
{{- end }}
{{- $inherited := list "resources" "podAnnotations" "podLabels" "nodeSelector" "tolerations" "affinity" "topologySpreadConstraints" "priorityClassName" }}
{{- $groups := list }}
{{- range $name, $spec := $specs }}
{{- $implicit := $spec.implicit | default false }}
{{- $group := dict "name" $name "implicit" $implicit }}
{{- $_ := set $group "deployment" (ternary $fullname (printf "%s-%s" $fullname $name | trunc 63 | trimSuffix "-") $implicit) }}
{{- $_ = set $group "jobTypes" ($spec.jobTypes | default list) }}
{{- $_ = set $group "dlqMirror" ($spec.dlqMirror | default false) }}
{{- $_ = set $group "replicas" (hasKey $spec "replicas" | ternary $spec.replicas $root.Values.replicaCount) }}
{{- range $inherited }}
{{- $_ = set $group . (hasKey $spec . | ternary (get $spec .) (get $root.Values .)) }}
{{- end }}
{{- $autoscaling := deepCopy $root.Values.autoscaling }}
{{- include "conveyor.merge" (dict "dst" $autoscaling "src" ($spec.autoscaling | default dict)) }}
{{- $_ = set $group "autoscaling" $autoscaling }}
{{- $env := dict }}
{{- $groupConfig := $spec.config | default dict }}
{{- $consumerGroup := $config.kafka.group_id }}
{{- if not $implicit }}
{{- $consumerGroup = printf "%s-%s" $config.kafka.group_id $name }}
{{- if and $groupConfig.kafka (hasKey $groupConfig.kafka "group_id") }}
{{- $consumerGroup = $groupConfig.kafka.group_id }}
{{- end }}
{{- $_ = set $env (printf "%sKAFKA%sGROUP_ID" $prefix $delimiter) $consumerGroup }}
{{- range $job, $policy := $config.jobs }}
{{- if and $policy.enabled (not (has $job $group.jobTypes)) }}
{{- $_ = set $env (printf "%sJOBS%s%s%sENABLED" $prefix $delimiter (upper $job) $delimiter) "false" }}
{{- end }}
{{- end }}
{{- if and $config.dlq_mirror.enabled (not $group.dlqMirror) }}
{{- $_ = set $env (printf "%sDLQ_MIRROR%sENABLED" $prefix $delimiter) "false" }}
{{- end }}
{{- include "conveyor.collectEnv" (dict "out" $env "config" (omit $groupConfig "kafka") "name" $prefix) }}
{{- include "conveyor.collectEnv" (dict "out" $env "config" (dict "kafka" (omit ($groupConfig.kafka | default dict) "group_id")) "name" $prefix) }}
{{- end }}
{{- $_ = set $group "consumerGroup" $consumerGroup }}
{{- $_ = set $group "env" $env }}
{{- $groups = append $groups $group }}
{{- end }}
{{- toJson (dict "groups" $groups) }}
{{- end }}

{{/* The topics a group consumes: each job type's source and retry topic, and its
deferred topic when it has fair share. */}}
{{- define "conveyor.groupTopics" -}}
{{- $config := .root.Values.config }}
{{- $topics := list }}
{{- range .group.jobTypes }}
{{- $job := get $config.jobs . }}
{{- $topic := $job.topic }}
{{- $topics = append $topics $topic }}
{{- $topics = append $topics (printf "%s%s" $topic $config.kafka.retry_suffix) }}
{{- if and (eq ($job.fairness | default "none") "organization") (ne ($job.ordering | default "none") "key") }}
{{- $topics = append $topics (printf "%s%s" $topic ($config.kafka.deferred_suffix | default ".deferred")) }}
{{- end }}
{{- end }}
{{- toJson $topics }}
{{- end }}

{{/* Pod-level settings shared by the worker and the hook Jobs. */}}
{{- define "conveyor.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Placement of a pod. Input: a map with nodeSelector, tolerations, ... */}}
{{- define "conveyor.podPlacement" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* An alert's runbook annotation. Input: dict "root" $ "alert" <name>. */}}
{{- define "conveyor.runbook" -}}
{{- with .root.Values.metrics.prometheusRule.runbookBaseUrl -}}
runbook_url: {{ printf "%s#%s" . (lower $.alert) | quote }}
{{- end }}
{{- end }}

{{/* The kafkaTls Secret as a volume, and its read-only mount (nothing without kafkaTls.secretName). */}}
{{- define "conveyor.kafkaTlsVolume" -}}
{{- with .Values.kafkaTls.secretName }}
- name: kafka-tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "conveyor.kafkaTlsMount" -}}
{{- if .Values.kafkaTls.secretName }}
- name: kafka-tls
  mountPath: {{ .Values.kafkaTls.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
With tracing on (config.tracing.enabled, or the group's own), the traces' resource
names the pod: service.name, service.version (the image tag), the namespace and
Deployment, and the pod and node from the downward API, then the configured
config.tracing.resource_attributes (later keys win). As JSON {"entries": [...env],
"replaces": <the variable it composes, left out of the group's env>}.
Input: dict "root" $ "group" <group>.
*/}}
{{- define "conveyor.traceEnv" -}}
{{- $root := .root }}
{{- $group := .group }}
{{- $prefix := include "conveyor.envPrefix" $root }}
{{- $delimiter := include "conveyor.envDelimiter" $root }}
{{- $attributesName := printf "%sTRACING%sRESOURCE_ATTRIBUTES" $prefix $delimiter }}
{{- $enabledName := printf "%sTRACING%sENABLED" $prefix $delimiter }}
{{- $tracing := $root.Values.config.tracing }}
{{- $enabled := $tracing.enabled }}
{{- if hasKey $group.env $enabledName }}{{ $enabled = eq (get $group.env $enabledName) "true" }}{{ end }}
{{- $configured := $tracing.resource_attributes | default "" }}
{{- if hasKey $group.env $attributesName }}{{ $configured = get $group.env $attributesName }}{{ end }}
{{- $entries := list }}
{{- if $enabled }}
{{- $identity := list
  (printf "service.name=%s" $root.Values.config.worker.service_name)
  (printf "service.version=%s" (default $root.Chart.AppVersion $root.Values.image.tag))
  (printf "k8s.namespace.name=%s" $root.Release.Namespace)
  (printf "k8s.deployment.name=%s" $group.deployment)
  "k8s.pod.name=$(K8S_POD_NAME)"
  "k8s.node.name=$(K8S_NODE_NAME)" }}
{{- if $configured }}{{ $identity = append $identity $configured }}{{ end }}
{{- $entries = list
  (dict "name" "K8S_POD_NAME" "valueFrom" (dict "fieldRef" (dict "fieldPath" "metadata.name")))
  (dict "name" "K8S_NODE_NAME" "valueFrom" (dict "fieldRef" (dict "fieldPath" "spec.nodeName")))
  (dict "name" $attributesName "value" (join "," $identity)) }}
{{- end }}
{{- toJson (dict "entries" $entries "replaces" (ternary $attributesName "" $enabled)) }}
{{- end }}
