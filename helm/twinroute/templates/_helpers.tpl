{{/*
Chart name, truncated to a DNS label.
*/}}
{{- define "twinroute.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: "<release>-<chart>", or the release name when it already contains the
chart name. Truncated to 50 characters so that suffixes ("-webhook", "-provider-keys") keep
Service names within 63.
*/}}
{{- define "twinroute.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"name-version" for the helm.sh/chart label.
*/}}
{{- define "twinroute.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels common to every object. Call with the root context.
*/}}
{{- define "twinroute.labels" -}}
helm.sh/chart: {{ include "twinroute.chart" . }}
app.kubernetes.io/name: {{ include "twinroute.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: twinroute
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels of one component's objects: (dict "ctx" $ "component" "webhook").
*/}}
{{- define "twinroute.componentLabels" -}}
{{ include "twinroute.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Selector labels of one component's pods: (dict "ctx" $ "component" "webhook").
*/}}
{{- define "twinroute.selectorLabels" -}}
app.kubernetes.io/name: {{ include "twinroute.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The twinroute image reference.
*/}}
{{- define "twinroute.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Object names.
*/}}
{{- define "twinroute.webhookName" -}}
{{- printf "%s-webhook" (include "twinroute.fullname" .) }}
{{- end }}

{{- define "twinroute.webhookServiceAccountName" -}}
{{- if .Values.webhook.serviceAccount.create }}
{{- default (include "twinroute.webhookName" .) .Values.webhook.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.webhook.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "twinroute.webhookTlsSecretName" -}}
{{- printf "%s-webhook-tls" (include "twinroute.fullname" .) }}
{{- end }}

{{- define "twinroute.injectorSettingsName" -}}
{{- printf "%s-injector" (include "twinroute.fullname" .) }}
{{- end }}

{{/*
ConfigMap (key twinroute.yaml) that injected sidecars mount: existingConfigMap or the chart's.
*/}}
{{- define "twinroute.configMapName" -}}
{{- default (printf "%s-config" (include "twinroute.fullname" .)) .Values.existingConfigMap }}
{{- end }}

{{/*
ConfigMap the standalone Deployment mounts.
*/}}
{{- define "twinroute.standaloneConfigMapName" -}}
{{- if .Values.standalone.existingConfigMap }}
{{- .Values.standalone.existingConfigMap }}
{{- else if .Values.existingConfigMap }}
{{- .Values.existingConfigMap }}
{{- else }}
{{- printf "%s-standalone" (include "twinroute.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Secret with the provider keys: existingSecret or "<fullname>-provider-keys" (created by the chart
from providerKeys, or by the user).
*/}}
{{- define "twinroute.keysSecretName" -}}
{{- default (printf "%s-provider-keys" (include "twinroute.fullname" .)) .Values.existingSecret }}
{{- end }}

{{/*
Namespaces that get the chart's config ConfigMap and provider-keys Secret: the release namespace
and sidecar.namespaces, without duplicates.
*/}}
{{- define "twinroute.configNamespaces" -}}
{{- $nss := list .Release.Namespace }}
{{- range .Values.sidecar.namespaces }}
{{- $nss = append $nss . }}
{{- end }}
{{- $nss | uniq | toJson }}
{{- end }}

{{/*
Probes of a twinroute proxy container whose admin port is named "admin".
*/}}
{{- define "twinroute.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: admin
  periodSeconds: 1
  failureThreshold: 30
  timeoutSeconds: 1
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
  periodSeconds: 10
  failureThreshold: 3
  timeoutSeconds: 2
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
  periodSeconds: 5
  failureThreshold: 2
  timeoutSeconds: 2
{{- end }}

{{/*
Whether the release shares state through Redis (sharedState.redisUrl or existingSecret set).
*/}}
{{- define "twinroute.sharedStateOn" -}}
{{- if or .Values.sharedState.redisUrl .Values.sharedState.existingSecret }}true{{- end }}
{{- end }}

{{/*
Secret holding the Redis URL: sharedState.existingSecret or "<fullname>-shared-state" (created by
the chart from sharedState.redisUrl).
*/}}
{{- define "twinroute.sharedStateSecretName" -}}
{{- default (printf "%s-shared-state" (include "twinroute.fullname" .)) .Values.sharedState.existingSecret }}
{{- end }}

{{/*
.Values.config with its shared_state block when sharedState is on: the URL comes from the env
var TWINROUTE_REDIS_URL (the Secret's key, never in a ConfigMap). As JSON, for fromJson.
*/}}
{{- define "twinroute.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- if include "twinroute.sharedStateOn" . }}
{{- $ss := dict "redis_url_env" "TWINROUTE_REDIS_URL" "cluster" .Values.sharedState.cluster "namespace" .Values.sharedState.namespace "timeout_ms" (int .Values.sharedState.timeoutMs) }}
{{- $_ := set $cfg "shared_state" $ss }}
{{- end }}
{{- $cfg | toJson }}
{{- end }}

{{/*
The env entry giving a twinroute container the Redis URL, when sharedState is on.
*/}}
{{- define "twinroute.sharedStateEnv" -}}
{{- if include "twinroute.sharedStateOn" . }}
env:
  - name: TWINROUTE_REDIS_URL
    valueFrom:
      secretKeyRef:
        name: {{ include "twinroute.sharedStateSecretName" . }}
        key: {{ .Values.sharedState.secretKey }}
{{- end }}
{{- end }}
