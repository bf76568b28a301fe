{{/*
The adapter sync container (`python -m flywheel_gateway adapter-sync`, gateway/README.md): a
sidecar of every vLLM pod (adapterSync.mode=sidecar) or the single container of its own
Deployment (sharedVolume). It copies each published adapter into /adapters (the folder vLLM's
filesystem resolver reads) and loads it on the replicas in FLYWHEEL_ADAPTER_SYNC_REPLICAS.
Call with the root context.
*/}}
{{- define "flywheel.adapterSyncContainer" -}}
{{- $sidecar := eq .Values.adapterSync.mode "sidecar" -}}
{{- $ms := include "flywheel.componentName" (dict "root" . "component" "model-server") -}}
{{- $replicas := list "http://127.0.0.1:8000" -}}
{{- if not $sidecar -}}
{{- $replicas = list -}}
{{- range $i := until (int .Values.modelServer.replicas) -}}
{{- $replicas = append $replicas (printf "http://%s-%d.%s-pods.%s.svc:8000" $ms $i $ms $.Release.Namespace) -}}
{{- end -}}
{{- end -}}
- name: adapter-sync
  image: {{ include "flywheel.image" (dict "root" . "image" .Values.adapterSync.image) }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    {{- toYaml .Values.adapterSync.args | nindent 4 }}
  {{- if .Values.adapterSync.healthPort }}
  ports:
    - name: sync-health
      containerPort: {{ .Values.adapterSync.healthPort }}
      protocol: TCP
  {{- end }}
  env:
    - name: HOME
      value: /tmp
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: FLYWHEEL_ADAPTER_SYNC_ADAPTER_DIR
      value: /adapters
    {{- if $sidecar }}
    # Its own replica only: every vLLM pod has its own sync, so every replica gets every adapter.
    - name: FLYWHEEL_ADAPTER_SYNC_REPLICAS
      value: {{ toJson $replicas | quote }}
    # One durable consumer per pod (StatefulSet names are stable across restarts).
    - name: FLYWHEEL_ADAPTER_SYNC_DURABLE
      value: "adapter-sync-$(POD_NAME)"
    # The probe through the gateway may reach a replica whose sidecar has not loaded the adapter
    # yet; each sidecar checks its own replica's /v1/models instead.
    - name: FLYWHEEL_ADAPTER_SYNC_PROBE
      value: "false"
    {{- else }}
    # Every replica by its stable name (the StatefulSet's headless Service).
    - name: FLYWHEEL_ADAPTER_SYNC_REPLICAS
      value: {{ toJson $replicas | quote }}
    - name: FLYWHEEL_ADAPTER_SYNC_DURABLE
      value: adapter-sync
    - name: FLYWHEEL_ADAPTER_SYNC_PROBE
      value: "true"
    {{- end }}
    - name: FLYWHEEL_ADAPTER_SYNC_GATEWAY_URL
      value: "http://{{ include "flywheel.componentName" (dict "root" . "component" "gateway") }}:{{ .Values.gateway.service.port }}"
    {{- if .Values.adapterSync.healthPort }}
    - name: FLYWHEEL_ADAPTER_SYNC_HEALTH_PORT
      value: {{ .Values.adapterSync.healthPort | quote }}
    {{- end }}
    - name: FLYWHEEL_GATEWAY_ADAPTER_PREFIX
      value: {{ .Values.gateway.adapterPrefix | quote }}
    - name: FLYWHEEL_GATEWAY_MASTER_KEY
      valueFrom:
        secretKeyRef:
          name: {{ include "flywheel.gatewaySecret" . }}
          key: {{ .Values.gateway.masterKeyKey }}
    {{- include "flywheel.natsEnv" . | trim | nindent 4 }}
    {{- include "flywheel.objectStoreEnv" . | trim | nindent 4 }}
    {{- include "flywheel.addressEnv" . | trim | nindent 4 }}
    {{- include "flywheel.serviceTokenEnv" . | trim | nindent 4 }}
    {{- with .Values.adapterSync.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if .Values.adapterSync.healthPort }}
  startupProbe:
    httpGet:
      path: /health
      port: sync-health
    periodSeconds: 2
    failureThreshold: 60
  readinessProbe:
    httpGet:
      path: /health
      port: sync-health
    periodSeconds: 10
  livenessProbe:
    httpGet:
      path: /health
      port: sync-health
    periodSeconds: 20
  {{- end }}
  resources:
    {{- toYaml .Values.adapterSync.resources | nindent 4 }}
  securityContext:
    {{- include "flywheel.containerSecurityContext" dict | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: adapters
      mountPath: /adapters
{{- end }}
