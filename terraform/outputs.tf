output "portal_url" {
  description = "Where researchers and stewards open the platform."
  value       = local.portal_url
}

output "platform_namespace" {
  description = "Namespace of the platform's services."
  value       = helm_release.platform.namespace
}

output "workloads_namespace" {
  description = "Namespace of desktops and batch jobs."
  value       = var.workloads_namespace
}

output "chain_namespace" {
  description = "Namespace of the Besu network (null when an existing chain is used)."
  value       = local.chain_ns
}

output "chain_rpc_url" {
  description = "JSON-RPC URL the tracer anchors through."
  value       = local.chain_url
}

output "platform_secrets_name" {
  description = "Secret with the platform's keys (made by the chart's hook; it outlives the release)."
  value       = "${helm_release.platform.name}-secrets"
}

output "desktop_chart_path" {
  description = "The chart the portal installs for each desktop (also inside the services image)."
  value       = abspath("${local.charts}/desktop")
}
