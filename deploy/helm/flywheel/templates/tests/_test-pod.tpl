{{/*
A `helm test` pod running one shell script. Call with
(dict "root" $ "name" "health-orchestrator" "image" IMAGE "script" SCRIPT "env" ENVLIST).
Optional: "command" (a list; default /bin/sh -ec, the script its one argument) and "args" (a list,
after the script), "resources" (the container's; default a few millicores and 128Mi), "tmp" (true:
a writable emptyDir at /tmp, the root filesystem being read-only).
*/}}
{{- define "flywheel.testPod" -}}
{{- $ctx := dict "root" .root "component" "test" }}
apiVersion: v1
kind: Pod
metadata:
  name: {{ include "flywheel.componentName" (dict "root" .root "component" (printf "test-%s" .name)) }}
  labels:
    {{- include "flywheel.labels" $ctx | nindent 4 }}
  annotations:
    helm.sh/hook: test
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  restartPolicy: Never
  serviceAccountName: {{ include "flywheel.componentName" (dict "root" .root "component" "runtime") }}
  automountServiceAccountToken: false
  securityContext:
    {{- include "flywheel.podSecurityContext" dict | nindent 4 }}
  containers:
    - name: test
      image: {{ .image }}
      command: {{ .command | default (list "/bin/sh" "-ec") | toJson }}
      args:
        - {{ .script | quote }}
        {{- range .args }}
        - {{ . | quote }}
        {{- end }}
      {{- with .env }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- if .resources }}
        {{- toYaml .resources | nindent 8 }}
        {{- else }}
        requests: {cpu: 10m, memory: 32Mi}
        limits: {cpu: 200m, memory: 128Mi}
        {{- end }}
      securityContext:
        {{- include "flywheel.containerSecurityContext" dict | nindent 8 }}
      {{- if .tmp }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 1Gi
      {{- end }}
{{- end }}
