{{/*
Names, labels and the pieces every workload shares. Resource names are `<fullname>-<component>`,
cut to 63 characters (the DNS label limit).
*/}}

{{- define "flywheel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flywheel.fullname" -}}
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

{{- define "flywheel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of one component's resources. Call with (dict "root" $ "component" "gateway"). */}}
{{- define "flywheel.componentName" -}}
{{- printf "%s-%s" (include "flywheel.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. Call with (dict "root" $ "component" "gateway"). */}}
{{- define "flywheel.labels" -}}
helm.sh/chart: {{ include "flywheel.chart" .root }}
{{ include "flywheel.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: flywheel
{{- end }}

{{/* Labels a component's Service, PDB and NetworkPolicy select its pods by. */}}
{{- define "flywheel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flywheel.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Image of a Flywheel component: <registry>/<name>:<tag>, tag defaulting to appVersion. */}}
{{- define "flywheel.image" -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .image.name $tag -}}
{{- end }}

{{/*
The five gRPC services: values key, component (resource name suffix), Python module, settings
prefix and port. The same table as services/cli/src/flywheel_cli/components.py.
*/}}
{{- define "flywheel.grpcServices" -}}
orchestrator: {component: orchestrator, module: flywheel_orchestrator, prefix: FLYWHEEL_ORCHESTRATOR_, port: 50051, service: flywheel.orchestrator.v1.OrchestratorService}
sandboxRunner: {component: sandbox-runner, module: flywheel_sandbox, prefix: FLYWHEEL_SANDBOX_, port: 50052, service: flywheel.sandbox.v1.SandboxService}
trajectoryStore: {component: trajectory-store, module: flywheel_trajectory, prefix: FLYWHEEL_TRAJECTORY_, port: 50053, service: flywheel.trajectory.v1.TrajectoryService}
datasetSvc: {component: dataset-svc, module: flywheel_dataset, prefix: FLYWHEEL_DATASET_, port: 50054, service: flywheel.dataset.v1.DatasetService}
trainer: {component: trainer-svc, module: flywheel_trainer, prefix: FLYWHEEL_TRAINER_, port: 50055, service: flywheel.trainer.v1.TrainerService}
{{- end }}

{{/* Pod-level security context of every Flywheel pod: non-root, RuntimeDefault seccomp. */}}
{{- define "flywheel.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid | default 65534 }}
runAsGroup: {{ .uid | default 65534 }}
fsGroup: {{ .uid | default 65534 }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context: read-only root filesystem, no capabilities, no escalation. */}}
{{- define "flywheel.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* NATS URL: the bundled official chart's client Service, or externalNats.url. */}}
{{- define "flywheel.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- $name := "nats" -}}
{{- $full := "" -}}
{{- if .Values.nats.fullnameOverride -}}
{{- $full = .Values.nats.fullnameOverride -}}
{{- else if contains $name .Release.Name -}}
{{- $full = .Release.Name -}}
{{- else -}}
{{- $full = printf "%s-%s" .Release.Name $name -}}
{{- end -}}
{{- printf "nats://%s.%s.svc:4222" ($full | trunc 63 | trimSuffix "-") .Release.Namespace -}}
{{- else -}}
{{- required "externalNats.url is required when nats.enabled is false" .Values.externalNats.url -}}
{{- end -}}
{{- end }}

{{/* Secret holding the S3 credentials. */}}
{{- define "flywheel.objectStoreSecret" -}}
{{- if .Values.objectStore.existingSecret -}}
{{- .Values.objectStore.existingSecret -}}
{{- else if .Values.minio.enabled -}}
{{- include "flywheel.componentName" (dict "root" . "component" "object-store") -}}
{{- else -}}
{{- fail "objectStore.existingSecret is required when minio.enabled is false: name a Secret with the S3 access key and secret key" -}}
{{- end -}}
{{- end }}

{{/* host:port of the S3 endpoint. */}}
{{- define "flywheel.objectStoreEndpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "%s:9000" (include "flywheel.componentName" (dict "root" . "component" "minio")) -}}
{{- else -}}
{{- required "objectStore.external.endpoint is required when minio.enabled is false" .Values.objectStore.external.endpoint -}}
{{- end -}}
{{- end }}

{{/* Environment of the shared NATS settings. */}}
{{- define "flywheel.natsEnv" -}}
- name: FLYWHEEL_NATS_URL
  value: {{ include "flywheel.natsUrl" . | quote }}
{{- end }}

{{/* Environment of the shared object-store settings; the credentials come from the Secret. */}}
{{- define "flywheel.objectStoreEnv" -}}
- name: FLYWHEEL_OBJECT_STORE_BACKEND
  value: s3
- name: FLYWHEEL_OBJECT_STORE_ENDPOINT
  value: {{ include "flywheel.objectStoreEndpoint" . | quote }}
- name: FLYWHEEL_OBJECT_STORE_SECURE
  value: {{ ternary "false" (.Values.objectStore.external.secure | toString) .Values.minio.enabled | quote }}
- name: FLYWHEEL_OBJECT_STORE_BUCKET
  value: {{ .Values.objectStore.bucket | quote }}
{{- with .Values.objectStore.region }}
- name: FLYWHEEL_OBJECT_STORE_REGION
  value: {{ . | quote }}
{{- end }}
- name: FLYWHEEL_OBJECT_STORE_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "flywheel.objectStoreSecret" . }}
      key: {{ .Values.objectStore.accessKeyKey }}
- name: FLYWHEEL_OBJECT_STORE_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "flywheel.objectStoreSecret" . }}
      key: {{ .Values.objectStore.secretKeyKey }}
{{- end }}

{{/* Where every service finds the others: <PREFIX>ADDRESS=host:port. */}}
{{- define "flywheel.addressEnv" -}}
{{- $root := . -}}
{{- range $key, $svc := include "flywheel.grpcServices" . | fromYaml }}
- name: {{ $svc.prefix }}ADDRESS
  value: "{{ include "flywheel.componentName" (dict "root" $root "component" $svc.component) }}:{{ $svc.port }}"
{{- end }}
- name: FLYWHEEL_GATEWAY_ADDRESS
  value: "{{ include "flywheel.componentName" (dict "root" . "component" "gateway") }}:{{ .Values.gateway.service.port }}"
- name: FLYWHEEL_MODEL_SERVER_ADDRESS
  value: "{{ include "flywheel.componentName" (dict "root" . "component" "model-server") }}:8000"
{{- end }}

{{/* Secret holding the service token (flywheel_common.auth). */}}
{{- define "flywheel.serviceTokenSecret" -}}
{{- .Values.serviceAuth.existingSecret | default (include "flywheel.componentName" (dict "root" . "component" "service-auth")) -}}
{{- end }}

{{/*
The service token every Flywheel container sends on its gRPC calls and accepts on its own, and
the optional next one (accepted too, during a rotation).
*/}}
{{- define "flywheel.serviceTokenEnv" -}}
- name: FLYWHEEL_SERVICE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "flywheel.serviceTokenSecret" . }}
      key: {{ .Values.serviceAuth.tokenKey }}
- name: FLYWHEEL_SERVICE_TOKEN_NEXT
  valueFrom:
    secretKeyRef:
      name: {{ include "flywheel.serviceTokenSecret" . }}
      key: {{ .Values.serviceAuth.nextTokenKey }}
      optional: true
{{- end }}

{{/* Secret holding the gateway master key. */}}
{{- define "flywheel.gatewaySecret" -}}
{{- .Values.gateway.existingSecret | default (include "flywheel.componentName" (dict "root" . "component" "gateway")) -}}
{{- end }}

{{/*
A generated secret value that survives upgrades: the value already in the cluster if the Secret
exists (lookup returns nothing offline, in `helm template` and in the tests), else a new random one.
Call with (dict "root" $ "secret" NAME "key" KEY "prefix" "" "length" 32).
*/}}
{{- define "flywheel.generatedSecretValue" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret -}}
{{- if and $existing (hasKey $existing.data .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- printf "%s%s" (.prefix | default "") (randAlphaNum (.length | default 32 | int)) | b64enc -}}
{{- end -}}
{{- end }}

{{/* PodDisruptionBudget for a component with more than one replica. */}}
{{- define "flywheel.pdb" -}}
{{- if and .root.Values.podDisruptionBudget.enabled (gt (int .replicas) 1) }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "flywheel.componentName" . }}
  labels:
    {{- include "flywheel.labels" . | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- include "flywheel.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}
