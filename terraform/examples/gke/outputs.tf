output "cluster_name" {
  description = "Name of the GKE cluster."
  value       = google_container_cluster.farm.name
}

output "cluster_endpoint" {
  description = "Public endpoint of the Kubernetes API (reachable from master_authorized_cidrs only)."
  value       = google_container_cluster.farm.endpoint
  sensitive   = true
}

output "get_credentials" {
  description = "The command that points kubectl at the cluster."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.farm.name} --region ${var.region} --project ${var.project_id}"
}

output "sip_address" {
  description = "The SIP address of the farm (UDP and TCP 5060): publish it in DNS (NAPTR/SRV/A records of the domain)."
  value       = google_compute_address.sip.address
}

output "namespace" {
  description = "Namespace of the farm."
  value       = module.ringmesh.namespace
}

output "sip_service" {
  description = "Name of the SIP LoadBalancer Service."
  value       = module.ringmesh.sip_service
}

output "bootstrap_token_secret" {
  description = "Secret holding the enrollment bootstrap token."
  value       = module.ringmesh.bootstrap_token_secret
}

output "provisioning_address" {
  description = "In-cluster address of the provisioning API (ringmesh ctl --provisioning)."
  value       = module.ringmesh.provisioning_address
}
