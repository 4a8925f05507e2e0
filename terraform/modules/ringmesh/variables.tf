variable "namespace" {
  description = "Kubernetes namespace the farm is installed in (created by this module)."
  type        = string
  default     = "ringmesh"
}

variable "release_name" {
  description = "Helm release name; object names start with it."
  type        = string
  default     = "ringmesh"
}

variable "chart_path" {
  description = "Path to the Ringmesh chart (helm/ringmesh of the repository) or a packaged chart."
  type        = string
  default     = null
}

variable "chart_version" {
  description = "Chart version to install when chart_path names a repository chart; null for a local directory."
  type        = string
  default     = null
}

variable "image_repository" {
  description = "Repository of the ringmesh image built from helm/Dockerfile."
  type        = string
}

variable "image_tag" {
  description = "Image tag; ignored when image_digest is set. Empty: the chart's appVersion."
  type        = string
  default     = ""
}

variable "image_digest" {
  description = "Image digest (sha256:...); set it in production so every pod runs the same bytes."
  type        = string
  default     = ""

  validation {
    condition     = var.image_digest == "" || can(regex("^sha256:[0-9a-f]{64}$", var.image_digest))
    error_message = "image_digest must be empty or sha256: followed by 64 lower-case hex digits."
  }
}

variable "domain" {
  description = "The SIP domain the farm serves and the digest realm (--domain)."
  type        = string
}

variable "supernodes" {
  description = "Number of supernodes (StatefulSet replicas)."
  type        = number
  default     = 3

  validation {
    condition     = var.supernodes >= 1 && floor(var.supernodes) == var.supernodes
    error_message = "supernodes must be a positive whole number."
  }
}

variable "binding_replicas" {
  description = "Replicas per binding, k (--replicas); a write needs a majority of min(k, supernodes)."
  type        = number
  default     = 3

  validation {
    condition     = var.binding_replicas >= 1 && var.binding_replicas <= 7
    error_message = "binding_replicas must be between 1 and 7."
  }
}

variable "sip_address" {
  description = "The SIP load balancer's address: set as the Service's loadBalancerIP and advertised by every supernode in Via, Record-Route and Contact. Empty: the cloud picks one and supernodes advertise pod IPs (in-cluster leaves only)."
  type        = string
  default     = ""
}

variable "sip_source_ranges" {
  description = "CIDRs allowed to reach the SIP load balancer (empty: anyone)."
  type        = list(string)
  default     = []
}

variable "sip_service_annotations" {
  description = "Annotations of the SIP LoadBalancer Service (cloud-specific load balancer settings)."
  type        = map(string)
  default     = {}
}

variable "ca_cert_pem" {
  description = "Farm CA certificate (PEM). Empty: enrollment generates the CA and keeps it in etcd."
  type        = string
  default     = ""
  sensitive   = true
}

variable "ca_key_pem" {
  description = "Farm CA private key (PEM), with ca_cert_pem."
  type        = string
  default     = ""
  sensitive   = true
}

variable "etcd_endpoints" {
  description = "External etcd endpoints (http://HOST:PORT). Empty: the chart runs etcd in the namespace."
  type        = list(string)
  default     = []
}

variable "storage_class" {
  description = "StorageClass of the supernode and etcd volumes (empty: the cluster default)."
  type        = string
  default     = ""
}

variable "supernode_anti_affinity" {
  description = "soft or hard: whether two supernodes may share a Kubernetes node."
  type        = string
  default     = "hard"

  validation {
    condition     = contains(["soft", "hard"], var.supernode_anti_affinity)
    error_message = "supernode_anti_affinity must be soft or hard."
  }
}

variable "monitoring" {
  description = "Install the ServiceMonitor, the PrometheusRule and the Grafana dashboard ConfigMaps (needs prometheus-operator CRDs and a Grafana dashboard sidecar)."
  type        = bool
  default     = true
}

variable "monitoring_labels" {
  description = "Labels the Prometheus operator selects ServiceMonitors and PrometheusRules by (e.g. release = prometheus)."
  type        = map(string)
  default     = {}
}

variable "extra_values" {
  description = "More chart values (YAML documents), merged after the module's own."
  type        = list(string)
  default     = []
}

variable "timeout_seconds" {
  description = "How long helm waits for the release to become ready."
  type        = number
  default     = 900
}
