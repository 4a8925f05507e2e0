# A regional GKE cluster suited to SIP, and Ringmesh installed on it:
# - VPC-native, private nodes, Dataplane V2 (eBPF; enforces the chart's
#   NetworkPolicies), shielded nodes, Workload Identity, secrets encrypted
#   with a Cloud KMS key, release channel;
# - a regional static address for the SIP load balancer, advertised by
#   every supernode (Via, Record-Route, Contact);
# - a mixed-protocol (UDP and TCP 5060) external passthrough Network Load
#   Balancer in front of the supernodes (externalTrafficPolicy Local keeps
#   each leaf's source address).

provider "google" {
  project = var.project_id
  region  = var.region
}

data "google_project" "this" {
  project_id = var.project_id
}

data "google_client_config" "current" {}

# --- network -------------------------------------------------------------------

resource "google_compute_network" "vpc" {
  name                    = "${var.name}-vpc"
  auto_create_subnetworks = false
}

resource "google_compute_subnetwork" "nodes" {
  name                     = "${var.name}-nodes"
  region                   = var.region
  network                  = google_compute_network.vpc.id
  ip_cidr_range            = var.subnet_cidr
  private_ip_google_access = true

  secondary_ip_range {
    range_name    = "pods"
    ip_cidr_range = var.pods_cidr
  }
  secondary_ip_range {
    range_name    = "services"
    ip_cidr_range = var.services_cidr
  }

  log_config {
    aggregation_interval = "INTERVAL_5_SEC"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# An explicit, logged default deny for ingress: only what GKE opens for the
# load balancer, its health checks and the cluster itself gets in.
resource "google_compute_firewall" "deny_ingress" {
  name      = "${var.name}-deny-ingress"
  network   = google_compute_network.vpc.id
  direction = "INGRESS"
  priority  = 65534

  deny {
    protocol = "all"
  }
  source_ranges = ["0.0.0.0/0"]

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

# Private nodes reach the internet (image pulls outside Artifact Registry,
# ACME, upstream SIP trunks) through Cloud NAT.
resource "google_compute_router" "nat" {
  name    = "${var.name}-router"
  region  = var.region
  network = google_compute_network.vpc.id
}

resource "google_compute_router_nat" "nat" {
  name                               = "${var.name}-nat"
  router                             = google_compute_router.nat.name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# The SIP address: reserved, so that DNS (NAPTR/SRV/A) and the advertised
# address outlive the Service.
resource "google_compute_address" "sip" {
  name         = "${var.name}-sip"
  region       = var.region
  address_type = "EXTERNAL"
  network_tier = "PREMIUM"
  labels       = var.labels
}

# --- keys and identities -------------------------------------------------------

resource "google_kms_key_ring" "gke" {
  name     = "${var.name}-gke"
  location = var.region
}

resource "google_kms_crypto_key" "secrets" {
  name            = "${var.name}-secrets"
  key_ring        = google_kms_key_ring.gke.id
  rotation_period = "7776000s"
  labels          = var.labels

  lifecycle {
    prevent_destroy = true
  }
}

# GKE's service agent encrypts and decrypts Kubernetes Secrets with the key.
resource "google_kms_crypto_key_iam_member" "gke_secrets" {
  crypto_key_id = google_kms_crypto_key.secrets.id
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:service-${data.google_project.this.number}@container-engine-robot.iam.gserviceaccount.com"
}

# Nodes run as their own least-privilege account, not the default one.
resource "google_service_account" "nodes" {
  account_id   = "${var.name}-nodes"
  display_name = "Ringmesh GKE nodes"
}

resource "google_project_iam_member" "nodes" {
  for_each = toset([
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/stackdriver.resourceMetadata.writer",
    "roles/artifactregistry.reader",
  ])
  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.nodes.email}"
}

# --- the cluster ---------------------------------------------------------------

resource "google_container_cluster" "farm" {
  #checkov:skip=CKV_GCP_24:PodSecurityPolicy was removed in Kubernetes 1.25; the namespace enforces the restricted Pod Security Standard instead (module ringmesh).
  #checkov:skip=CKV_GCP_66:Binary Authorization needs an attestor and a signing pipeline outside this example; enable it with the image signing of your registry.
  #checkov:skip=CKV_GCP_12:Dataplane V2 (datapath_provider ADVANCED_DATAPATH) enforces NetworkPolicy itself; the network_policy block (Calico) cannot be combined with it.
  #checkov:skip=CKV_GCP_65:Google Groups for RBAC needs a Google Workspace domain this example cannot assume; set authenticator_groups_config where one exists.
  name     = var.name
  location = var.region

  network    = google_compute_network.vpc.id
  subnetwork = google_compute_subnetwork.nodes.id

  min_master_version = var.kubernetes_version
  release_channel {
    channel = "REGULAR"
  }

  # Node pools are managed below.
  remove_default_node_pool = true
  initial_node_count       = 1

  # Dataplane V2 (eBPF) enforces NetworkPolicies.
  datapath_provider = "ADVANCED_DATAPATH"

  ip_allocation_policy {
    cluster_secondary_range_name  = "pods"
    services_secondary_range_name = "services"
  }

  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = false
    master_ipv4_cidr_block  = var.master_cidr
  }

  master_authorized_networks_config {
    dynamic "cidr_blocks" {
      for_each = var.master_authorized_cidrs
      content {
        display_name = cidr_blocks.key
        cidr_block   = cidr_blocks.value
      }
    }
  }

  addons_config {
    # Mixed-protocol LoadBalancer Services need the HttpLoadBalancing addon.
    http_load_balancing {
      disabled = false
    }
    network_policy_config {
      disabled = true # Dataplane V2 enforces policies itself.
    }
  }

  database_encryption {
    state    = "ENCRYPTED"
    key_name = google_kms_crypto_key.secrets.id
  }

  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  enable_shielded_nodes       = true
  enable_intranode_visibility = true
  enable_legacy_abac          = false

  master_auth {
    client_certificate_config {
      issue_client_certificate = false
    }
  }

  logging_config {
    enable_components = ["SYSTEM_COMPONENTS", "WORKLOADS"]
  }

  monitoring_config {
    enable_components = ["SYSTEM_COMPONENTS"]
    managed_prometheus {
      enabled = true
    }
  }

  resource_labels = var.labels

  node_config {
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    image_type      = "COS_CONTAINERD"
    metadata = {
      disable-legacy-endpoints = "true"
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
  }

  deletion_protection = true

  depends_on = [google_kms_crypto_key_iam_member.gke_secrets]
}

resource "google_container_node_pool" "supernodes" {
  name     = "${var.name}-supernodes"
  location = var.region
  cluster  = google_container_cluster.farm.name

  node_count = var.nodes_per_zone

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  upgrade_settings {
    # One node at a time: with the supernodes' PodDisruptionBudget a
    # surge upgrade drains one supernode at a time.
    max_surge       = 1
    max_unavailable = 0
  }

  node_config {
    machine_type    = var.node_machine_type
    image_type      = "COS_CONTAINERD"
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    labels          = var.labels
    metadata = {
      disable-legacy-endpoints = "true"
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
  }
}

# --- Ringmesh ------------------------------------------------------------------

provider "kubernetes" {
  host                   = "https://${google_container_cluster.farm.endpoint}"
  token                  = data.google_client_config.current.access_token
  cluster_ca_certificate = base64decode(google_container_cluster.farm.master_auth[0].cluster_ca_certificate)
}

provider "helm" {
  kubernetes {
    host                   = "https://${google_container_cluster.farm.endpoint}"
    token                  = data.google_client_config.current.access_token
    cluster_ca_certificate = base64decode(google_container_cluster.farm.master_auth[0].cluster_ca_certificate)
  }
}

module "ringmesh" {
  source = "../../modules/ringmesh"

  namespace        = "ringmesh"
  release_name     = "ringmesh"
  domain           = var.domain
  image_repository = var.image_repository
  image_digest     = var.image_digest
  supernodes       = var.supernodes

  sip_address       = google_compute_address.sip.address
  sip_source_ranges = var.sip_source_ranges
  storage_class     = "premium-rwo"

  supernode_anti_affinity = "hard"
  monitoring              = true
  monitoring_labels       = var.monitoring_labels

  extra_values = [yamlencode({
    sipService = {
      # A backend service-based external passthrough NLB: UDP and TCP on
      # one address (GKE mixed-protocol LoadBalancer).
      loadBalancerClass = "networking.gke.io/l4-regional-external"
    }
  })]

  depends_on = [google_container_node_pool.supernodes]
}
