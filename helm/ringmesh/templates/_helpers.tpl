{{/* Names, labels and the values every template shares. */}}

{{- define "ringmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ringmesh.fullname" -}}
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

{{/* The name of one component's objects: "<fullname>-<component>". */}}
{{- define "ringmesh.component" -}}
{{- printf "%s-%s" (include "ringmesh.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ringmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the pods of one component. */}}
{{- define "ringmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ringmesh.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Every object's labels. */}}
{{- define "ringmesh.labels" -}}
helm.sh/chart: {{ include "ringmesh.chart" .root }}
{{ include "ringmesh.selectorLabels" . }}
app.kubernetes.io/part-of: ringmesh
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/* Labels shared by every pod of this release (NetworkPolicy "the farm"). */}}
{{- define "ringmesh.farmLabels" -}}
app.kubernetes.io/name: {{ include "ringmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ringmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ringmesh.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest. Call with an image map and the root. */}}
{{- define "ringmesh.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* Object names. */}}
{{- define "ringmesh.overlayService" -}}{{ include "ringmesh.component" (dict "root" . "component" "overlay") }}{{- end }}
{{- define "ringmesh.sipService" -}}{{ include "ringmesh.component" (dict "root" . "component" "sip") }}{{- end }}
{{- define "ringmesh.supernodeName" -}}{{ include "ringmesh.component" (dict "root" . "component" "supernode") }}{{- end }}
{{- define "ringmesh.provisioningName" -}}{{ include "ringmesh.component" (dict "root" . "component" "provisioning") }}{{- end }}
{{- define "ringmesh.enrollmentName" -}}{{ include "ringmesh.component" (dict "root" . "component" "enrollment") }}{{- end }}
{{- define "ringmesh.etcdName" -}}{{ include "ringmesh.component" (dict "root" . "component" "etcd") }}{{- end }}

{{- define "ringmesh.bootstrapSecret" -}}
{{- default (include "ringmesh.component" (dict "root" . "component" "bootstrap")) .Values.bootstrapToken.existingSecret }}
{{- end }}

{{/* The Secret with the SIP TLS certificate: given, or made by cert-manager. */}}
{{- define "ringmesh.sipTlsSecret" -}}
{{- if .Values.sipTls.existingSecret }}
{{- .Values.sipTls.existingSecret }}
{{- else if .Values.sipTls.certManager.enabled }}
{{- include "ringmesh.component" (dict "root" . "component" "sip-tls") }}
{{- else }}
{{- fail "sipTls.enabled needs a certificate: set sipTls.existingSecret (a kubernetes.io/tls Secret) or sipTls.certManager.enabled with sipTls.certManager.issuerRef.name" }}
{{- end }}
{{- end }}

{{- define "ringmesh.caSecret" -}}
{{- default (include "ringmesh.component" (dict "root" . "component" "ca")) .Values.ca.existingSecret }}
{{- end }}

{{- define "ringmesh.adminTokenSecret" -}}
{{- default (include "ringmesh.component" (dict "root" . "component" "enrollment-admin")) .Values.enrollment.adminToken.existingSecret }}
{{- end }}

{{- define "ringmesh.storeKeySecret" -}}
{{- default (include "ringmesh.component" (dict "root" . "component" "store-key")) .Values.enrollment.storeKey.existingSecret }}
{{- end }}

{{- define "ringmesh.provisioningTlsSecret" -}}
{{- default (include "ringmesh.component" (dict "root" . "component" "provisioning-tls")) .Values.provisioning.tls.existingSecret }}
{{- end }}

{{/* The Secret (ca.crt, tls.crt, tls.key) holding one component's etcd
client certificate, its common name the component's etcd user: made by
the chart for the bundled etcd, given (etcd.clientSecrets) for an external
one; empty when an external etcd is reached without TLS. */}}
{{- define "ringmesh.etcdClientSecret" -}}
{{- if .root.Values.etcd.enabled }}
{{- include "ringmesh.component" (dict "root" .root "component" (printf "etcd-client-%s" .component)) }}
{{- else }}
{{- index .root.Values.etcd.clientSecrets .component }}
{{- end }}
{{- end }}

{{/* A component's etcd TLS flags (call with root and component). */}}
{{- define "ringmesh.etcdTlsArgs" -}}
{{- if include "ringmesh.etcdClientSecret" . }}
- --etcd-ca
- /etc/ringmesh/etcd/ca.crt
- --etcd-cert
- /etc/ringmesh/etcd/tls.crt
- --etcd-key
- /etc/ringmesh/etcd/tls.key
{{- end }}
{{- end }}

{{- define "ringmesh.etcdTlsMount" -}}
{{- if include "ringmesh.etcdClientSecret" . }}
- name: etcd-client
  mountPath: /etc/ringmesh/etcd
  readOnly: true
{{- end }}
{{- end }}

{{- define "ringmesh.etcdTlsVolume" -}}
{{- if include "ringmesh.etcdClientSecret" . }}
- name: etcd-client
  secret:
    secretName: {{ include "ringmesh.etcdClientSecret" . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* The cluster DNS suffix of this namespace's Services. */}}
{{- define "ringmesh.svcDomain" -}}
{{- printf "%s.svc" .Release.Namespace }}
{{- end }}

{{/* etcd endpoints, comma-separated, or fail: one of the two must be given. */}}
{{- define "ringmesh.etcdEndpoints" -}}
{{- if .Values.etcd.enabled }}
{{- $eps := list }}
{{- $name := include "ringmesh.etcdName" . }}
{{- range $i := until (int .Values.etcd.replicaCount) }}
{{- $eps = append $eps (printf "https://%s-%d.%s.%s:2379" $name $i $name (include "ringmesh.svcDomain" $)) }}
{{- end }}
{{- join "," $eps }}
{{- else if .Values.etcd.endpoints }}
{{- $tls := 0 }}
{{- range .Values.etcd.endpoints }}{{ if hasPrefix "https://" . }}{{ $tls = add1 $tls }}{{ end }}{{ end }}
{{- range $c, $s := .Values.etcd.clientSecrets }}
{{- if and $tls (not $s) }}
{{- fail (printf "etcd.clientSecrets.%s: https:// etcd endpoints need each component's client certificate Secret (ca.crt, tls.crt, tls.key)" $c) }}
{{- end }}
{{- if and $s (not $tls) }}
{{- fail (printf "etcd.clientSecrets.%s: client certificates need https:// etcd endpoints" $c) }}
{{- end }}
{{- end }}
{{- join "," .Values.etcd.endpoints }}
{{- else }}
{{- fail "etcd: set etcd.enabled=true (bundled etcd) or list etcd.endpoints (external etcd)" }}
{{- end }}
{{- end }}

{{/* Pod security context shared by every component. */}}
{{- define "ringmesh.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context shared by every container. */}}
{{- define "ringmesh.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Flags from a `config:` map: every key becomes `--key value` (a list: the
flag repeated; null or empty: left out, the binary's default). Keys are
sorted so the rendered pod spec is stable.
*/}}
{{- define "ringmesh.configArgs" -}}
{{- range $k := keys . | sortAlpha }}
{{- $v := index $ $k }}
{{- if kindIs "slice" $v }}
{{- range $item := $v }}
- {{ printf "--%s" $k | quote }}
- {{ include "ringmesh.scalar" $item | quote }}
{{- end }}
{{- else if and (not (kindIs "invalid" $v)) (ne (toString $v) "") }}
- {{ printf "--%s" $k | quote }}
- {{ include "ringmesh.scalar" $v | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* A value as the flag's text: numbers without exponent (YAML numbers
arrive as float64, and 1000000 would print as 1e+06). */}}
{{- define "ringmesh.scalar" -}}
{{- if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) }}
{{- int64 . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}
