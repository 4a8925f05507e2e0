variable "project_id" {
  description = "Google Cloud project that hosts the cluster."
  type        = string
}

variable "region" {
  description = "Region of the regional cluster and of the SIP load balancer address (nodes spread over its zones)."
  type        = string
  default     = "europe-west1"
}

variable "name" {
  description = "Name prefix of every resource (cluster, network, address, keys)."
  type        = string
  default     = "ringmesh"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name))
    error_message = "name must be 2 to 21 lower-case letters, digits or '-', starting with a letter."
  }
}

variable "kubernetes_version" {
  description = "Minimum GKE control-plane version; mixed-protocol (UDP and TCP) LoadBalancer Services need 1.34.1-gke.2190000 or later."
  type        = string
  default     = "1.34"
}

variable "node_machine_type" {
  description = "Machine type of the supernode pool."
  type        = string
  default     = "n2-standard-4"
}

variable "nodes_per_zone" {
  description = "Nodes per zone of the region (a regional pool places this many in each zone)."
  type        = number
  default     = 1
}

variable "subnet_cidr" {
  description = "Primary range of the cluster subnet (nodes)."
  type        = string
  default     = "10.10.0.0/20"
}

variable "pods_cidr" {
  description = "Secondary range for pods (VPC-native cluster)."
  type        = string
  default     = "10.20.0.0/14"
}

variable "services_cidr" {
  description = "Secondary range for Services."
  type        = string
  default     = "10.24.0.0/20"
}

variable "master_cidr" {
  description = "/28 range of the private control plane."
  type        = string
  default     = "172.16.0.16/28"
}

variable "master_authorized_cidrs" {
  description = "CIDRs allowed to reach the Kubernetes API (where Terraform and operators run)."
  type        = map(string)
}

variable "sip_source_ranges" {
  description = "CIDRs allowed to reach the SIP load balancer (empty: anyone, the usual case for a public SIP service)."
  type        = list(string)
  default     = []
}

variable "domain" {
  description = "The SIP domain the farm serves (--domain)."
  type        = string
}

variable "image_repository" {
  description = "Repository of the ringmesh image (e.g. an Artifact Registry repository in the project)."
  type        = string
}

variable "image_digest" {
  description = "Digest (sha256:...) of the ringmesh image to run."
  type        = string
}

variable "supernodes" {
  description = "Number of supernodes; keep it at or below the number of nodes (hard anti-affinity)."
  type        = number
  default     = 3
}

variable "monitoring_labels" {
  description = "Labels the Prometheus operator selects ServiceMonitors and PrometheusRules by."
  type        = map(string)
  default     = {}
}

variable "labels" {
  description = "Labels put on every Google Cloud resource."
  type        = map(string)
  default     = { app = "ringmesh" }
}
