{{/* Chart name, truncated to the 63 characters Kubernetes allows in a label. */}}
{{- define "infopt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object's name. KubeRay adds suffixes (-serve-svc, -head-svc, -raycluster-xxxxx)
to the RayService's name, so it is kept short. */}}
{{- define "infopt.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else if contains (include "infopt.name" .) .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "infopt.name" .) | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "infopt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "infopt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The Ray pods of this release (KubeRay labels every Ray pod `ray.io/is-ray-node: "yes"`). */}}
{{- define "infopt.rayPodLabels" -}}
{{ include "infopt.selectorLabels" . }}
ray.io/is-ray-node: "yes"
{{- end }}

{{- define "infopt.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "infopt.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "infopt.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The Qdrant server's in-cluster URL. */}}
{{- define "infopt.qdrantUrl" -}}
http://{{ include "infopt.fullname" . }}-qdrant:{{ .Values.qdrant.httpPort }}
{{- end }}

{{/* The API keys taken from Secrets (`apiKeys`), as a YAML list of {env, secretName, secretKey, tenant}
(tenant empty: an admin key). The env names are INFOPT_KEY_<TENANT> and INFOPT_ADMIN_KEY, then _1, _2, ...
for more keys of the same owner. */}}
{{- define "infopt.apiKeyRefs" -}}
{{- $refs := list }}
{{- $seen := dict }}
{{- $owners := list }}
{{- range $tenant, $keys := .Values.apiKeys.tenants }}
{{- $owners = append $owners (dict "tenant" $tenant "keys" $keys "base" (printf "INFOPT_KEY_%s" (regexReplaceAll "[^A-Z0-9]" (upper $tenant) "_"))) }}
{{- end }}
{{- with .Values.apiKeys.admin }}
{{- $owners = append $owners (dict "tenant" "" "keys" . "base" "INFOPT_ADMIN_KEY") }}
{{- end }}
{{- range $owners }}
{{- $owner := . }}
{{- range $i, $key := (kindIs "map" $owner.keys | ternary (list $owner.keys) $owner.keys) }}
{{- $env := eq $i 0 | ternary $owner.base (printf "%s_%d" $owner.base $i) }}
{{- if hasKey $seen $env }}
{{- fail (printf "apiKeys: two keys would share the environment variable %s (tenants %q and %q): rename one tenant" $env (get $seen $env) $owner.tenant) }}
{{- end }}
{{- $_ := set $seen $env $owner.tenant }}
{{- $secret := required "apiKeys.secretName (or a secretName on each key) is required with apiKeys.tenants or apiKeys.admin" (default $.Values.apiKeys.secretName $key.secretName) }}
{{- $refs = append $refs (dict "env" $env "secretName" $secret "secretKey" $key.secretKey "tenant" $owner.tenant) }}
{{- end }}
{{- end }}
{{- toYaml $refs }}
{{- end }}

{{/* The Serve config (serveConfigV2): one application whose args are the project's AppConfig. */}}
{{- define "infopt.serveConfig" -}}
{{- $args := deepCopy .Values.serve.args }}
{{- $cache := default dict $args.cache }}
{{- if and .Values.qdrant.enabled (eq (default "edge" $cache.backend) "server") }}
{{- $_ := set $cache "url" (include "infopt.qdrantUrl" .) }}
{{- $_ := set $args "cache" $cache }}
{{- end }}
{{- /* API keys from Secrets: referenced by environment variable (set by infopt.env), never by value. */}}
{{- $refs := include "infopt.apiKeyRefs" . | fromYamlArray }}
{{- if $refs }}
{{- $auth := default dict $args.auth }}
{{- $tenants := default dict $auth.tenants }}
{{- $admin := default list $auth.admin_keys }}
{{- range $refs }}
{{- if .tenant }}
{{- $tenant := default dict (get $tenants .tenant) }}
{{- $_ := set $tenant "keys" (append (default list $tenant.keys) (dict "env" .env)) }}
{{- $_ := set $tenants .tenant $tenant }}
{{- else }}
{{- $admin = append $admin (dict "env" .env) }}
{{- end }}
{{- end }}
{{- if $tenants }}
{{- $_ := set $auth "tenants" $tenants }}
{{- end }}
{{- if $admin }}
{{- $_ := set $auth "admin_keys" $admin }}
{{- end }}
{{- $_ := set $args "auth" $auth }}
{{- end }}
{{- range $name, $tenant := dig "auth" "tenants" dict $args }}
{{- if not (and $tenant $tenant.keys) }}
{{- fail (printf "serve.args.auth.tenants.%s has no keys: add some there (sha256, env, file) or name its Secret key in apiKeys.tenants.%s" $name $name) }}
{{- end }}
{{- end }}
proxy_location: {{ .Values.serve.proxyLocation }}
http_options:
  host: 0.0.0.0
  port: {{ .Values.serve.port }}
applications:
  - name: infopt
    route_prefix: /
    import_path: deployments.app:build_app
    args:
      {{- toYaml $args | nindent 6 }}
    {{- /* The Validator's cascade autoscaling is an application-level policy (deployments.app). */}}
    {{- $cascade := dig "load" "autoscaling" dict $args }}
    {{- if $cascade.enabled }}
    autoscaling_policy:
      policy_function: serving.load.autoscaling:CascadeApplicationPolicy
      policy_kwargs:
        validator: Validator
        source: Ingress
        {{- with omit $cascade "enabled" }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    {{- end }}
    {{- with .Values.serve.deployments }}
    deployments:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end }}

{{/* Environment shared by every Ray container: the HF token, the Qdrant API key and the service's API keys. */}}
{{- define "infopt.env" -}}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{- if and (eq .Values.model.source "hub") .Values.model.hub.tokenSecretName }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.model.hub.tokenSecretName }}
      key: {{ .Values.model.hub.tokenSecretKey }}
{{- end }}
{{- if .Values.qdrant.apiKeySecretName }}
- name: INFOPT_CACHE__API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.qdrant.apiKeySecretName }}
      key: {{ .Values.qdrant.apiKeySecretKey }}
{{- end }}
{{- range include "infopt.apiKeyRefs" . | fromYamlArray }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .secretKey | quote }}
{{- end }}
{{- end }}

{{/* Volumes of Ray pods: shared memory for vLLM workers, the writable folders of a read-only root file
system, and the model PVC when models come from one. */}}
{{- define "infopt.volumes" -}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shm }}
{{- range $name, $path := .root.Values.ray.writableDirs }}
- name: rw-{{ $name }}
  emptyDir: {}
{{- end }}
{{- if eq .root.Values.model.source "pvc" }}
- name: models
  persistentVolumeClaim:
    claimName: {{ required "model.pvc.claimName is required when model.source is pvc" .root.Values.model.pvc.claimName }}
    readOnly: true
{{- end }}
{{- end }}

{{- define "infopt.volumeMounts" -}}
- name: dshm
  mountPath: /dev/shm
{{- include "infopt.writableMounts" . }}
{{- if eq .Values.model.source "pvc" }}
- name: models
  mountPath: {{ .Values.model.pvc.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Mounts of `ray.writableDirs` (also in KubeRay's autoscaler sidecar). */}}
{{- define "infopt.writableMounts" -}}
{{- range $name, $path := .Values.ray.writableDirs }}
- name: rw-{{ $name }}
  mountPath: {{ $path }}
{{- end }}
{{- end }}

{{/* One worker group of the RayCluster. */}}
{{- define "infopt.workerGroup" -}}
{{- $g := .group }}
- groupName: {{ $g.groupName }}
  replicas: {{ $g.replicas }}
  minReplicas: {{ $g.minReplicas }}
  maxReplicas: {{ $g.maxReplicas }}
  rayStartParams:
    {{- toYaml $g.rayStartParams | nindent 4 }}
  template:
    metadata:
      labels:
        {{- include "infopt.selectorLabels" .root | nindent 8 }}
        app.kubernetes.io/component: ray-worker-{{ $g.groupName }}
    spec:
      {{- with .root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .root.Values.ray.podSecurityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: ray-worker
          image: {{ include "infopt.image" .root }}
          imagePullPolicy: {{ .root.Values.image.pullPolicy }}
          {{- with .root.Values.ray.containerSecurityContext }}
          securityContext:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          env:
            {{- include "infopt.env" .root | nindent 12 }}
          ports:
            - name: metrics
              containerPort: 8080
              protocol: TCP
          resources:
            {{- $res := deepCopy $g.resources }}
            {{- if .gpus }}
            {{- $_ := set $res.limits "nvidia.com/gpu" .gpus }}
            {{- $_ := set $res.requests "nvidia.com/gpu" .gpus }}
            {{- end }}
            {{- toYaml $res | nindent 12 }}
          volumeMounts:
            {{- include "infopt.volumeMounts" .root | nindent 12 }}
      volumes:
        {{- include "infopt.volumes" (dict "root" .root "shm" $g.shmSize) | nindent 8 }}
      {{- with $g.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $g.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $g.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
