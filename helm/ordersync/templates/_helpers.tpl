{{/* vim: set filetype=mustache: */}}

{{- define "ordersync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Leaves room for the longest component suffix ("-migrate") within 63 characters. */}}
{{- define "ordersync.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 55 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 55 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 55 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ordersync.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ordersync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ordersync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ordersync.labels" -}}
helm.sh/chart: {{ include "ordersync.chart" . }}
{{ include "ordersync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ordersync
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "web") */}}
{{- define "ordersync.componentSelectorLabels" -}}
{{ include "ordersync.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ordersync.componentLabels" -}}
{{ include "ordersync.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ordersync.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "ordersync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ordersync.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The settings the contract treats as secret. They may only come from a Secret. */}}
{{- define "ordersync.secretKeys" -}}
DATABASE_URL REDIS_URL SHOP_WEBHOOK_SECRETS SHOP_CALLBACK_SECRET KLARNA_USERNAME KLARNA_PASSWORD ADYEN_API_KEY ADYEN_HMAC_KEYS ADYEN_WEBHOOK_USERNAME ADYEN_WEBHOOK_PASSWORD OPERATOR_TOKEN
{{- end -}}

{{- define "ordersync.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "ordersync.fullname" .) -}}
{{- end -}}

{{/* Refuse value sets that would leak a secret into a ConfigMap or cannot work. */}}
{{- define "ordersync.validate" -}}
{{- $secretKeys := splitList " " (include "ordersync.secretKeys" .) -}}
{{- range $key, $value := .Values.config -}}
{{- if has $key $secretKeys -}}
{{- fail (printf "config.%s is a secret: set it under secrets.values (or in secrets.existingSecret), never in config" $key) -}}
{{- end -}}
{{- end -}}
{{- if and (eq (toString .Values.config.ADYEN_MODIFICATIONS_API) "classic") (not .Values.config.ADYEN_PAL_URL) -}}
{{- fail "config.ADYEN_MODIFICATIONS_API is classic: config.ADYEN_PAL_URL must be set" -}}
{{- end -}}
{{- if and .Values.secrets.existingSecret (gt (len (compact (values .Values.secrets.values))) 0) -}}
{{- fail "set either secrets.existingSecret or secrets.values, not both: the existing Secret would silently win" -}}
{{- end -}}
{{- end -}}

{{/* Checksums roll the pods when the chart-managed configuration changes. */}}
{{- define "ordersync.checksumAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if .Values.accounts.file }}
checksum/accounts: {{ include (print .Template.BasePath "/accounts.yaml") . | sha256sum }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end -}}

{{/* Environment of every long-running container: all non-secret and secret settings. */}}
{{- define "ordersync.envFrom" -}}
- configMapRef:
    name: {{ include "ordersync.fullname" . }}
- secretRef:
    name: {{ include "ordersync.secretName" . }}
{{- with .Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ordersync.containerSecurityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end -}}

{{/* Pod-level settings shared by every ordersync pod: (dict "ctx" $ "component" $values) */}}
{{- define "ordersync.podCommon" -}}
{{- $ctx := .ctx -}}
automountServiceAccountToken: false
# Service links would add an env var per Service in the namespace; a Service called
# "redis" would then set REDIS_PORT and the like next to the real settings.
enableServiceLinks: false
securityContext:
  {{- toYaml $ctx.Values.podSecurityContext | nindent 2 }}
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with (.component.nodeSelector | default $ctx.Values.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (.component.tolerations | default $ctx.Values.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (.component.affinity | default $ctx.Values.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "ordersync.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{/* Several markets: the accounts file and each account's Secret, mounted read-only. */}}
{{- define "ordersync.accountsMounts" -}}
{{- if .Values.accounts.file }}
- name: accounts
  mountPath: {{ .Values.accounts.mountPath }}
  readOnly: true
{{- range .Values.accounts.secrets }}
- name: account-{{ .name }}
  mountPath: {{ $.Values.accounts.secretsPath }}/{{ .name }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{- define "ordersync.accountsVolumes" -}}
{{- if .Values.accounts.file }}
- name: accounts
  configMap:
    name: {{ include "ordersync.fullname" . }}-accounts
{{- range .Values.accounts.secrets }}
- name: account-{{ .name }}
  secret:
    secretName: {{ .existingSecret | default (printf "%s-account-%s" (include "ordersync.fullname" $) .name) }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end -}}
