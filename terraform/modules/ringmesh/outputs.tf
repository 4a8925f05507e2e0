output "namespace" {
  description = "Namespace of the farm."
  value       = kubernetes_namespace_v1.farm.metadata[0].name
}

output "release_name" {
  description = "Helm release name."
  value       = helm_release.ringmesh.name
}

output "chart_version" {
  description = "Version of the installed chart."
  value       = helm_release.ringmesh.metadata[0].version
}

output "sip_service" {
  description = "Name of the SIP LoadBalancer Service (kubectl get service NAME for its address)."
  value       = "${local.fullname}-sip"
}

output "sip_address" {
  description = "The advertised SIP address (empty when the cloud picks the load balancer's address)."
  value       = var.sip_address
}

output "bootstrap_token_secret" {
  description = "Secret holding the enrollment bootstrap token (key token)."
  value       = kubernetes_secret_v1.bootstrap.metadata[0].name
}

output "provisioning_address" {
  description = "In-cluster address of the provisioning API, for ringmesh ctl --provisioning."
  value       = "${local.fullname}-provisioning.${kubernetes_namespace_v1.farm.metadata[0].name}.svc:5660"
}
