{{/*
A Job run as a pre-install/pre-upgrade hook with the worker's image and config,
and only the secret groups it uses (e.g. migrate: postgres; topics: none).
Input: dict "root" $ "name" <suffix> "args" <list> "weight" <string>
"secrets" <list of secrets.* group names> "kafka" <bool: talks to Kafka, so
gets the kafkaTls mount>.
Kept after a failure for inspection; replaced on the next attempt. The config
is inline, not the ConfigMap: a pre-install hook runs before the release's
other resources exist.
*/}}
{{- define "conveyor.hookJob" -}}
{{- $root := .root -}}
{{- $prefix := include "conveyor.envPrefix" $root -}}
{{- $secrets := dict -}}
{{- range .secrets }}{{- $_ := set $secrets . (index $root.Values.secrets .) }}{{- end -}}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "conveyor.fullname" $root }}-{{ .name }}
  labels:
    {{- include "conveyor.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
  annotations:
    "helm.sh/hook": pre-install,pre-upgrade
    "helm.sh/hook-weight": {{ .weight | quote }}
    "helm.sh/hook-delete-policy": before-hook-creation,hook-succeeded
spec:
  backoffLimit: {{ $root.Values.hooks.backoffLimit }}
  activeDeadlineSeconds: {{ $root.Values.hooks.activeDeadlineSeconds }}
  template:
    metadata:
      labels:
        {{- include "conveyor.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .name }}
    spec:
      restartPolicy: Never
      {{- with $root.Values.hooks.serviceAccountName }}
      serviceAccountName: {{ . }}
      {{- end }}
      automountServiceAccountToken: false
      {{- include "conveyor.podCommon" $root | trim | nindent 6 }}
      {{- with include "conveyor.podPlacement" $root.Values | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      containers:
        - name: {{ .name }}
          image: {{ include "conveyor.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: {{ toJson .args }}
          {{- with $root.Values.extraEnvFrom }}
          envFrom:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          env:
            {{- include "conveyor.envEntries" (include "conveyor.configEnv" $root | fromJson) | trim | nindent 12 }}
            {{- with include "conveyor.secretEnv" (dict "root" $root "secrets" $secrets "name" $prefix "path" "secrets") | trim }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $root.Values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          resources:
            {{- toYaml $root.Values.hooks.resources | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if .kafka }}
            {{- include "conveyor.kafkaTlsMount" $root | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir: {}
        {{- if .kafka }}
        {{- include "conveyor.kafkaTlsVolume" $root | nindent 8 }}
        {{- end }}
{{- end }}
