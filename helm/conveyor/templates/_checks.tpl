{{/*
Mistakes the schema cannot see, refused at render time with the values named.
Included once, from the ConfigMap template.
*/}}
{{- define "conveyor.checks" -}}
{{- $root := . }}
{{- $config := .Values.config }}
{{- $groups := (include "conveyor.groups" . | fromJson).groups }}
{{- $port := int $config.worker.metrics_port }}
{{- /* every enabled job type in exactly one group, the mirror in exactly one */}}
{{- if .Values.workerGroups }}
{{- $owner := dict }}
{{- $mirrors := list }}
{{- range $group := $groups }}
{{- $where := printf "workerGroups.%s" $group.name }}
{{- if and (not $group.jobTypes) (not $group.dlqMirror) }}
{{- fail (printf "%s runs nothing: give it jobTypes or dlqMirror: true" $where) }}
{{- end }}
{{- range $job := $group.jobTypes }}
{{- if not (get $config.jobs $job).enabled }}
{{- fail (printf "%s.jobTypes lists %s, which config.jobs.%s.enabled turns off" $where $job $job) }}
{{- end }}
{{- if hasKey $owner $job }}
{{- fail (printf "%s is in workerGroups.%s and %s.jobTypes: each of its jobs would run once per group" $job (get $owner $job) $where) }}
{{- end }}
{{- $_ := set $owner $job $group.name }}
{{- end }}
{{- if $group.dlqMirror }}{{ $mirrors = append $mirrors $group.name }}{{ end }}
{{- $gc := (get $root.Values.workerGroups $group.name).config | default dict }}
{{- include "conveyor.checkGroupConfig" (dict "where" (printf "%s.config" $where) "config" $gc) }}
{{- end }}
{{- range $job, $policy := $config.jobs }}
{{- if and $policy.enabled (not (hasKey $owner $job)) }}
{{- fail (printf "config.jobs.%s is enabled but no worker group lists it in jobTypes: its topic would not be consumed (add it to a group or set config.jobs.%s.enabled: false)" $job $job) }}
{{- end }}
{{- end }}
{{- if and $config.dlq_mirror.enabled (ne (len $mirrors) 1) }}
{{- fail (printf "the dead-letter mirror must run in exactly one worker group (dlqMirror: true), not %d %v" (len $mirrors) $mirrors) }}
{{- end }}
{{- if and (not $config.dlq_mirror.enabled) $mirrors }}
{{- fail (printf "workerGroups %v set dlqMirror but config.dlq_mirror.enabled is false" $mirrors) }}
{{- end }}
{{- end }}
{{- /* per group: grace period and autoscaling bounds */}}
{{- range $group := $groups }}
{{- $worker := deepCopy $config.worker }}
{{- if not $group.implicit }}
{{- $gc := (get $root.Values.workerGroups $group.name).config | default dict }}
{{- include "conveyor.merge" (dict "dst" $worker "src" ($gc.worker | default dict)) }}
{{- end }}
{{- $bound := addf $worker.drain_timeout_s $worker.hard_exit_after_s }}
{{- if le (float64 $root.Values.terminationGracePeriodSeconds) $bound }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be greater than config.worker.drain_timeout_s + config.worker.hard_exit_after_s (%v, worker group %s)" $root.Values.terminationGracePeriodSeconds $bound $group.name) }}
{{- end }}
{{- $as := $group.autoscaling }}
{{- if $as.enabled }}
{{- $where := ternary "autoscaling" (printf "workerGroups.%s.autoscaling" $group.name) $group.implicit }}
{{- if gt (int $as.maxReplicaCount) (int $config.kafka.topic_partitions) }}
{{- fail (printf "%s.maxReplicaCount (%v) is above config.kafka.topic_partitions (%v): a replica beyond the partitions of its topics gets none" $where $as.maxReplicaCount $config.kafka.topic_partitions) }}
{{- end }}
{{- if gt (int $as.minReplicaCount) (int $as.maxReplicaCount) }}
{{- fail (printf "%s.minReplicaCount (%v) is above maxReplicaCount (%v)" $where $as.minReplicaCount $as.maxReplicaCount) }}
{{- end }}
{{- if not $group.jobTypes }}
{{- fail (printf "%s: worker group %s consumes no job topic, there is no lag to scale on" $where $group.name) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* monitoring needs the metrics endpoint */}}
{{- $monitoring := or .Values.metrics.serviceMonitor.enabled .Values.metrics.prometheusRule.enabled }}
{{- if and $monitoring (not (and .Values.metrics.service.enabled (gt $port 0))) }}
{{- fail "metrics.serviceMonitor and metrics.prometheusRule need metrics.service.enabled and config.worker.metrics_port > 0" }}
{{- end }}
{{- /* Kafka security: a login to pass, TLS files that are mounted where the settings look */}}
{{- $kafka := $config.kafka }}
{{- if hasPrefix "SASL_" $kafka.security_protocol }}
{{- range $field := list "sasl_username" "sasl_password" }}
{{- if not (or (get $root.Values.secrets.kafka $field).name $root.Values.existingSecret) }}
{{- fail (printf "config.kafka.security_protocol %s needs secrets.kafka.%s: set its name, or existingSecret" $kafka.security_protocol $field) }}
{{- end }}
{{- end }}
{{- end }}
{{- $tls := .Values.kafkaTls }}
{{- $inMount := list }}
{{- range $field := list "ssl_ca_file" "ssl_cert_file" "ssl_key_file" }}
{{- $path := get $kafka $field }}
{{- if and $path (hasPrefix (printf "%s/" (trimSuffix "/" $tls.mountPath)) $path) }}
{{- if not $tls.secretName }}
{{- fail (printf "config.kafka.%s (%s) is under kafkaTls.mountPath, but kafkaTls.secretName is empty: nothing is mounted there" $field $path) }}
{{- end }}
{{- $inMount = append $inMount $field }}
{{- end }}
{{- end }}
{{- if and $tls.secretName (not $inMount) }}
{{- fail (printf "kafkaTls.secretName %s is mounted at %s, but no config.kafka.ssl_ca_file, ssl_cert_file or ssl_key_file points into it" $tls.secretName $tls.mountPath) }}
{{- end }}
{{- /* extraEnv must not set a variable the chart sets */}}
{{- $chartEnv := include "conveyor.configEnv" . | fromJson }}
{{- range (include "conveyor.secretEnvAll" . | fromYamlArray) }}
{{- $_ := set $chartEnv .name "" }}
{{- end }}
{{- range $group := $groups }}
{{- range $name, $_ := $group.env }}{{ $_ := set $chartEnv $name "" }}{{ end }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if hasKey $chartEnv .name }}
{{- fail (printf "extraEnv sets %s, which the chart already sets from config:/secrets:/workerGroups" .name) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A worker group's config: may tune its own jobs and process, not what every
group must share (topics, the broker, the metrics port) nor what jobTypes and
dlqMirror decide. Input: dict "where" <values path> "config" <map>.
*/}}
{{- define "conveyor.checkGroupConfig" -}}
{{- $where := .where }}
{{- $shared := dict "kafka" (list "bootstrap_servers" "security_protocol" "topic_partitions" "replication_factor" "dlq_topic" "retry_suffix" "deferred_suffix") "worker" (list "metrics_port") "dlq_mirror" (list "enabled") }}
{{- range $section, $keys := $shared }}
{{- range $key := $keys }}
{{- if hasKey (get $.config $section | default dict) $key }}
{{- fail (printf "%s.%s.%s cannot differ per worker group; set config.%s.%s (or jobTypes/dlqMirror)" $where $section $key $section $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $job, $policy := (.config.jobs | default dict) }}
{{- range $key := list "topic" "enabled" }}
{{- if hasKey $policy $key }}
{{- fail (printf "%s.jobs.%s.%s cannot differ per worker group; use jobTypes, or config.jobs.%s.%s" $where $job $key $job $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
