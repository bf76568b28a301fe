{{- /*
The trajectory store's listing index: which PostgreSQL (if any) it uses, and its environment.
"external": trajectoryStore.database.existingSecret holds a URL; "bundled": the chart's own
PostgreSQL (postgres.enabled and useBundledPostgres); "": the SQLite index on the pod's emptyDir.
*/ -}}
{{- define "flywheel.trajectoryStoreDatabase" -}}
{{- $db := .Values.trajectoryStore.database -}}
{{- if $db.existingSecret -}}external
{{- else if and $db.useBundledPostgres .Values.postgres.enabled -}}bundled
{{- end -}}
{{- end -}}

{{- /* FLYWHEEL_TRAJECTORY_DATABASE_*: the URL only through a Secret (the bundled one's password is
expanded by Kubernetes from $(POSTGRES_PASSWORD), as the gateway's DATABASE_URL is). */ -}}
{{- define "flywheel.trajectoryStoreDatabaseEnv" -}}
{{- $db := .Values.trajectoryStore.database -}}
{{- $kind := include "flywheel.trajectoryStoreDatabase" . -}}
{{- if eq $kind "external" }}
- name: FLYWHEEL_TRAJECTORY_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $db.existingSecret }}
      key: {{ $db.urlKey }}
{{- else if eq $kind "bundled" }}
{{- $pg := include "flywheel.componentName" (dict "root" . "component" "postgres") }}
- name: POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.postgres.existingSecret | default $pg }}
      key: password
- name: FLYWHEEL_TRAJECTORY_DATABASE_URL
  value: "postgresql://{{ .Values.postgres.user }}:$(POSTGRES_PASSWORD)@{{ $pg }}:5432/{{ .Values.postgres.database }}"
{{- end }}
{{- if $kind }}
- name: FLYWHEEL_TRAJECTORY_DATABASE_SCHEMA
  value: {{ $db.schema | quote }}
{{- end }}
{{- end -}}
