{{/*
A `helm test` pod running one shell script. Call with
(dict "root" $ "name" "health-orchestrator" "image" IMAGE "script" SCRIPT "env" ENVLIST).
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
      command: ["/bin/sh", "-ec"]
      args:
        - {{ .script | quote }}
      {{- with .env }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        requests: {cpu: 10m, memory: 32Mi}
        limits: {cpu: 200m, memory: 128Mi}
      securityContext:
        {{- include "flywheel.containerSecurityContext" dict | nindent 8 }}
{{- end }}
