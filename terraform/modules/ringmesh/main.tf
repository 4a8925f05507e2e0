# Installs a Ringmesh farm into an existing cluster: the namespace, the
# Secrets (bootstrap token, optionally the CA) and the Helm release of
# helm/ringmesh with values built from the variables.

locals {
  chart_path = coalesce(var.chart_path, "${path.module}/../../../helm/ringmesh")
  # The chart's object names: "<release>-ringmesh-<component>", or
  # "<release>-<component>" when the release name already says ringmesh.
  fullname = strcontains(var.release_name, "ringmesh") ? var.release_name : "${var.release_name}-ringmesh"
  has_ca     = var.ca_cert_pem != "" && var.ca_key_pem != ""
  labels = {
    "app.kubernetes.io/part-of"    = "ringmesh"
    "app.kubernetes.io/managed-by" = "terraform"
  }

  values = {
    domain = var.domain
    image = {
      repository = var.image_repository
      tag        = var.image_tag
      digest     = var.image_digest
      pullPolicy = var.image_digest == "" ? "Always" : "IfNotPresent"
    }
    supernode = {
      replicaCount = var.supernodes
      antiAffinity = var.supernode_anti_affinity
      config = {
        replicas  = var.binding_replicas
        auth      = "digest"
        advertise = var.sip_address
      }
      persistence = {
        size         = "2Gi"
        storageClass = var.storage_class
      }
    }
    sipService = {
      loadBalancerIP           = var.sip_address
      loadBalancerSourceRanges = var.sip_source_ranges
      annotations              = var.sip_service_annotations
    }
    bootstrapToken = {
      existingSecret = kubernetes_secret_v1.bootstrap.metadata[0].name
    }
    ca = {
      existingSecret = local.has_ca ? kubernetes_secret_v1.ca[0].metadata[0].name : ""
    }
    etcd = {
      enabled   = length(var.etcd_endpoints) == 0
      endpoints = var.etcd_endpoints
      persistence = {
        size         = "4Gi"
        storageClass = var.storage_class
      }
    }
    monitoring = {
      serviceMonitor = { enabled = var.monitoring, labels = var.monitoring_labels }
      prometheusRule = { enabled = var.monitoring, labels = var.monitoring_labels }
      dashboards     = { enabled = var.monitoring }
    }
  }
}

resource "kubernetes_namespace_v1" "farm" {
  metadata {
    name   = var.namespace
    labels = merge(local.labels, { "pod-security.kubernetes.io/enforce" = "restricted" })
  }
}

# The token supernodes present to enrollment for their certificate.
resource "random_password" "bootstrap" {
  length  = 40
  special = false
}

resource "kubernetes_secret_v1" "bootstrap" {
  metadata {
    name      = "${var.release_name}-bootstrap-token"
    namespace = kubernetes_namespace_v1.farm.metadata[0].name
    labels    = local.labels
  }
  type = "Opaque"
  data = {
    token = random_password.bootstrap.result
  }
}

resource "kubernetes_secret_v1" "ca" {
  count = local.has_ca ? 1 : 0

  metadata {
    name      = "${var.release_name}-ca"
    namespace = kubernetes_namespace_v1.farm.metadata[0].name
    labels    = local.labels
  }
  type = "kubernetes.io/tls"
  data = {
    "tls.crt" = var.ca_cert_pem
    "tls.key" = var.ca_key_pem
  }
}

resource "helm_release" "ringmesh" {
  name      = var.release_name
  namespace = kubernetes_namespace_v1.farm.metadata[0].name
  chart     = local.chart_path
  version   = var.chart_version

  values = concat([yamlencode(local.values)], var.extra_values)

  # Ready = every supernode joined the ring with its replicas in place.
  wait            = true
  atomic          = true
  cleanup_on_fail = true
  timeout         = var.timeout_seconds
  max_history     = 10
}
