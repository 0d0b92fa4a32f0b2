{{/* Labels on every object of the release. */}}
{{- define "minimesh.labels" -}}
app.kubernetes.io/name: minimesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The injector's pods. */}}
{{- define "minimesh.selector" -}}
app.kubernetes.io/name: minimesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: injector
{{- end }}

{{- define "minimesh.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The injector runs in the cluster unless webhook.url points elsewhere. */}}
{{- define "minimesh.inCluster" -}}
{{- if not .Values.webhook.url }}true{{ end }}
{{- end }}

{{- define "minimesh.tlsSecret" -}}
{{- if eq .Values.tls.mode "secret" }}{{ .Values.tls.secretName }}{{ else }}minimesh-injector-tls{{ end }}
{{- end }}

{{- /*
tls.mode=helm's CA, serving certificate and key, base64 as the Secret
holds them, as JSON {"ca", "crt", "key"}: read back from the Secret when
it has a CA, so that upgrades keep them, else generated (after the Secret
was deleted: a rotation). webhook.yaml renders them (the Secret, the
caBundle) and deployment.yaml their checksum, which must be of the same
pair; generating is random, so the first call of a render keeps its answer
in .Values (a copy helm makes per render, never stored) for the others.
*/ -}}
{{- define "minimesh.helmTLS" -}}
{{- if not (hasKey .Values "minimeshHelmTLS") }}
{{- $ns := .Release.Namespace }}
{{- $tls := dict }}
{{- $existing := lookup "v1" "Secret" $ns "minimesh-injector-tls" }}
{{- if and $existing (index ($existing.data | default dict) "ca.crt") }}
{{- range $k, $f := dict "ca" "ca.crt" "crt" "tls.crt" "key" "tls.key" }}
{{- $_ := set $tls $k (index $existing.data $f | default "") }}
{{- end }}
{{- else }}
{{- $svc := printf "minimesh-injector.%s.svc" $ns }}
{{- $days := int .Values.tls.validityDays }}
{{- $ca := genCA "minimesh-injector-ca" $days }}
{{- $cert := genSignedCert $svc nil (list "minimesh-injector" (printf "minimesh-injector.%s" $ns) $svc (printf "%s.cluster.local" $svc)) $days $ca }}
{{- $tls = dict "ca" ($ca.Cert | b64enc) "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) }}
{{- end }}
{{- $_ := set .Values "minimeshHelmTLS" $tls }}
{{- end }}
{{- index .Values "minimeshHelmTLS" | toJson }}
{{- end }}

{{- /*
The injector's checksum/tls annotation: the CA and certificate it must
serve, so that a rotation (or a rollback past one) rolls its pods onto
the new Secret at once rather than after the kubelet refreshes the
mounted volume (about a minute, every admission failing TLS meanwhile),
while an upgrade that keeps them rolls nothing. Under tls.mode=secret it
is webhook.caBundle's, which changes with the user's Secret; nothing
under cert-manager, which renews the Secret in place for the injector to
reload.
*/ -}}
{{- define "minimesh.tlsChecksum" -}}
{{- if eq .Values.tls.mode "helm" }}
{{- $tls := include "minimesh.helmTLS" . | fromJson }}
{{- printf "%s\n%s" $tls.ca $tls.crt | sha256sum }}
{{- else if eq .Values.tls.mode "secret" }}
{{- .Values.webhook.caBundle | sha256sum }}
{{- end }}
{{- end }}

{{- define "minimesh.restricted" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- /*
The injection config's own checks (injector/config.go, Validate), made at
render time: `minimesh controller` refuses at startup a config that breaks
them, and a crash-looping injector behind failurePolicy Ignore leaves pods
unmeshed while helm says deployed. What JSON Schema can say is in
values.schema.json; what it cannot (ports that differ, a request within its
limit and the sidecar's bounds, an init image for a pinned proxy image,
an image's repository path within 255 bytes, no bare image ID) is
here, and so are ports below 1024, whose refusal needs its reason.
e2e/chart/values_agree_test.go holds the chart and Validate to the same
answers.
*/ -}}
{{- define "minimesh.checkConfig" -}}
{{- $p := .Values.proxy }}
{{- /* The sidecar runs as a non-root user with every capability dropped
(NET_BIND_SERVICE too): below 1024 its listen fails, and every injected
pod with it. */}}
{{- range list "outboundPort" "adminPort" "inboundPort" }}
{{- $port := index $p . | int }}
{{- if lt $port 1024 }}
{{- fail (printf "proxy.%s: %d is below 1024: the sidecar runs as a non-root user with every capability dropped, and cannot listen on it" . $port) }}
{{- end }}
{{- end }}
{{- if eq (int $p.outboundPort) (int $p.adminPort) }}
{{- fail (printf "proxy.adminPort: %v is also proxy.outboundPort; the sidecar's three ports must differ" $p.adminPort) }}
{{- end }}
{{- if or (eq (int $p.inboundPort) (int $p.outboundPort)) (eq (int $p.inboundPort) (int $p.adminPort)) }}
{{- fail (printf "proxy.inboundPort: %v is also proxy.outboundPort or proxy.adminPort; the sidecar's three ports must differ" $p.inboundPort) }}
{{- end }}
{{- /* The schema holds the images to the reference grammar; what its
patterns cannot say is here: no bare image ID, a repository path of at most
255 bytes (docs/install.md). */}}
{{- $image := $p.image | default (include "minimesh.image" .) }}
{{- $imageValue := ternary "proxy.image:" "image.repository:" (not (empty $p.image)) }}
{{- include "minimesh.checkImage" (dict "name" $imageValue "ref" $image) }}
{{- if $p.initImage }}
{{- include "minimesh.checkImage" (dict "name" "proxy.initImage:" "ref" $p.initImage) }}
{{- else }}
{{- /* DefaultInitImage's rule: the repository with -init, the same tag;
a digest names one image only. */}}
{{- if contains "@" $image }}
{{- fail (printf "proxy.initImage: must be set: proxy.image %s is pinned by digest, which names no other image" $image) }}
{{- end }}
{{- $repo := regexReplaceAll ":[^:/]*$" $image "" }}
{{- if not $repo }}
{{- fail (printf "proxy.initImage: must be set: proxy.image %q has no repository to append -init to" $image) }}
{{- end }}
{{- /* A path at the limit has no room for -init. */}}
{{- $init := printf "%s-init%s" $repo (regexFind ":[^:/]*$" $image) }}
{{- include "minimesh.checkImage" (dict "name" (printf "proxy.initImage: must be set: proxy.image %q gives the default" $image) "ref" $init) }}
{{- end }}
{{- /* The bounds of the minimesh.io/proxy-* annotations (maxProxyCPU and
maxProxyMemory, injector/annotations.go), also in nano units. */}}
{{- range list (list "cpu" "8" "8000000000") (list "memory" "8Gi" "8589934592000000000") }}
{{- $res := index . 0 }}{{ $max := index . 1 }}{{ $maxNanos := index . 2 }}
{{- $req := index $p.resources (printf "%sRequest" $res) | toString }}
{{- $lim := index $p.resources (printf "%sLimit" $res) | toString }}
{{- $reqNanos := "" }}{{ $limNanos := "" }}
{{- if $req }}
{{- $reqNanos = include "minimesh.quantityNanos" (dict "name" (printf "proxy.resources.%sRequest" $res) "value" $req "max" $max "maxNanos" $maxNanos) }}
{{- end }}
{{- if $lim }}
{{- $limNanos = include "minimesh.quantityNanos" (dict "name" (printf "proxy.resources.%sLimit" $res) "value" $lim "max" $max "maxNanos" $maxNanos) }}
{{- end }}
{{- if and $reqNanos $limNanos (include "minimesh.less" (list $limNanos $reqNanos)) }}
{{- fail (printf "proxy.resources.%sRequest: %s is more than proxy.resources.%sLimit %s" $res $req $res $lim) }}
{{- end }}
{{- end }}
{{- end }}

{{- /*
Fails, naming .name ("proxy.image:", say), when the image reference .ref
(of the schema's grammar) is a bare image ID or has a repository path of
more than 255 bytes, as checkImageRef (injector/config.go) counts it: without the
registry (a first part with a dot, a port, upper case, or localhost), and
with Docker Hub's library/ before a name of one part.
*/ -}}
{{- define "minimesh.checkImage" -}}
{{- $ref := .ref }}
{{- if regexMatch "^[a-f0-9]{64}$" $ref }}
{{- fail (printf "%s %q: 64 hex digits name an image ID, not a repository" .name $ref) }}
{{- end }}
{{- $parts := splitList "/" (regexReplaceAll ":[^:/]*$" (regexReplaceAll "@.*$" $ref "") "") }}
{{- $host := "" }}
{{- $first := first $parts }}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost") (ne (lower $first) $first)) }}
{{- $host = $first }}
{{- $parts = rest $parts }}
{{- end }}
{{- $path := join "/" $parts }}
{{- if and (eq (len $parts) 1) (has $host (list "" "docker.io" "index.docker.io")) }}
{{- $path = printf "library/%s" $path }}
{{- end }}
{{- if gt (len $path) 255 }}
{{- fail (printf "%s %q: repository path of %d bytes, more than 255" .name $ref (len $path)) }}
{{- end }}
{{- end }}

{{- /*
A Kubernetes quantity (.value, named .name in errors) in nano units: a
decimal string without leading zeros, rounded up to a nano as
resource.ParseQuantity does, so that values compare exactly. Fails unless
it is more than zero and at most .max (.maxNanos in nano units). The forms
read are the schema's: digits, an optional decimal part, and m, k, M, G,
T, Ki, Mi, Gi or Ti. Template integers are int64, too small for 1Ti in
nanos: decimal suffixes only move the decimal point, in the string, and
binary ones are multiplied once the value is known to be within the bound.
*/ -}}
{{- define "minimesh.quantityNanos" -}}
{{- $v := .value }}
{{- $re := "^([0-9]+)(?:[.]([0-9]+))?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$" }}
{{- if not (regexMatch $re $v) }}
{{- fail (printf "%s: %q: not a quantity like 100m or 64Mi (digits, an optional decimal part, then none or one of m k M G T Ki Mi Gi Ti)" .name $v) }}
{{- end }}
{{- $int := regexReplaceAll $re $v "${1}" }}
{{- $frac := regexReplaceAll $re $v "${2}" }}
{{- $suffix := regexReplaceAll $re $v "${3}" }}
{{- $over := printf "%s: %q: more than %s, the most a sidecar may be given" .name $v .max }}
{{- $nanos := "" }}
{{- $binary := dict "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 }}
{{- if hasKey $binary $suffix }}
{{- if gt (len $frac) 9 }}
{{- fail (printf "%s: %q: more than 9 decimal places before a binary suffix" .name $v) }}
{{- end }}
{{- $x := regexReplaceAll "^0+" (printf "%s%s" $int (trunc 9 (printf "%s000000000" $frac))) "" | default "0" }}
{{- $mult := index $binary $suffix }}
{{- if or (gt (len $x) 18) (gt (atoi $x) (div (atoi .maxNanos) $mult)) }}
{{- fail $over }}
{{- end }}
{{- $nanos = mul (atoi $x) $mult | toString }}
{{- else }}
{{- $shift := index (dict "m" 6 "" 9 "k" 12 "M" 15 "G" 18 "T" 21) $suffix }}
{{- $digits := printf "%s%s%s" $int $frac (repeat $shift "0") }}
{{- $point := add (len $int) $shift | int }}
{{- $nanos = regexReplaceAll "^0+" (substr 0 $point $digits) "" | default "0" }}
{{- if regexMatch "[1-9]" (substr $point (len $digits) $digits) }}
{{- /* Round up: the last digit that is not a 9, plus one. */}}
{{- $nines := regexFind "9*$" $nanos }}
{{- $head := trimSuffix $nines $nanos }}
{{- $last := "0" }}
{{- if $head }}
{{- $last = substr (sub (len $head) 1 | int) (len $head) $head }}
{{- $head = substr 0 (sub (len $head) 1 | int) $head }}
{{- end }}
{{- $nanos = printf "%s%d%s" $head (add1 (atoi $last)) (repeat (len $nines) "0") }}
{{- end }}
{{- end }}
{{- if eq $nanos "0" }}
{{- fail (printf "%s: %q: must be more than zero" .name $v) }}
{{- end }}
{{- if include "minimesh.less" (list .maxNanos $nanos) }}
{{- fail $over }}
{{- end }}
{{- $nanos }}
{{- end }}

{{- /* "true" if the first of two decimal strings without leading zeros is
the smaller number. */ -}}
{{- define "minimesh.less" -}}
{{- $a := index . 0 }}{{ $b := index . 1 }}
{{- if or (lt (len $a) (len $b)) (and (eq (len $a) (len $b)) (lt $a $b)) }}true{{ end }}
{{- end }}
