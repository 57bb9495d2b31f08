# Inputs of the module. Secrets (database URL, client secret) are marked sensitive and go
# into Kubernetes Secrets, never into Helm values.

variable "release_name" {
  description = "Helm release name of the platform (and prefix of the Besu release)."
  type        = string
  default     = "vre"
}

variable "platform_namespace" {
  description = "Namespace of the portal, dataset service and tracer."
  type        = string
  default     = "vre"
}

variable "workloads_namespace" {
  description = "Namespace where desktops and batch jobs run."
  type        = string
  default     = "vre-workloads"
}

variable "chain_namespace" {
  description = "Namespace of the Besu network."
  type        = string
  default     = "vre-chain"
}

variable "create_namespaces" {
  description = "Create the namespaces (with the restricted Pod Security Standard enforced)."
  type        = bool
  default     = true
}

variable "services_image" {
  description = "Repository of the services image (images/services)."
  type        = string
  default     = "vre/services"
}

variable "image_tag" {
  description = "Tag of the platform's images; a version, never latest."
  type        = string
  default     = "0.1.0"

  validation {
    condition     = var.image_tag != "latest" && length(var.image_tag) > 0
    error_message = "image_tag must name a version, not latest."
  }
}

variable "portal_hostname" {
  description = "Host name browsers reach the portal at (the Ingress host)."
  type        = string
}

variable "ingress_class_name" {
  description = "IngressClass of the portal's Ingress (empty: the cluster default)."
  type        = string
  default     = ""
}

variable "tls_secret_name" {
  description = "Secret with the portal's TLS certificate, in the platform namespace."
  type        = string
  default     = "vre-tls"
}

variable "ingress_controller_namespace" {
  description = "Namespace of the ingress controller, the only way in to the portal."
  type        = string
  default     = "ingress-nginx"
}

variable "database_url" {
  description = "postgresql://user:password@host:5432/db of the external PostgreSQL."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("^postgres(ql)?(\\+[a-z0-9]+)?://", var.database_url))
    error_message = "database_url must be a postgresql:// URL."
  }
}

variable "elasticsearch_url" {
  description = "Elasticsearch URL for the catalogue search (empty: database full text)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "keycloak_url" {
  description = "Base URL of Keycloak (empty: the portal issues the tokens itself)."
  type        = string
  default     = ""
}

variable "keycloak_realm" {
  description = "Keycloak realm of the platform's users."
  type        = string
  default     = "vre"
}

variable "keycloak_client_id" {
  description = "The portal's OIDC client in that realm."
  type        = string
  default     = "vre-portal"
}

variable "keycloak_client_secret" {
  description = "That client's secret."
  type        = string
  default     = ""
  sensitive   = true
}

variable "besu_enabled" {
  description = "Run the Besu network here (false: give chain_url of an existing node)."
  type        = bool
  default     = true
}

variable "besu_validators" {
  description = "The network's validators in order (vre_charts/besu/tools/besu_network.py)."
  type = list(object({
    address    = string
    public_key = string
  }))
  default = []
}

variable "besu_node_keys_secret" {
  description = "Secret in chain_namespace with the validators' node keys (empty: chart default)."
  type        = string
  default     = ""
}

variable "chain_url" {
  description = "JSON-RPC URL of an existing chain node, when besu_enabled is false."
  type        = string
  default     = ""
}

variable "chain_contract" {
  description = "Address of the anchor contract (empty until deployed)."
  type        = string
  default     = ""
}

variable "deploy_chain_contract" {
  description = "Deploy the anchor contract once after the install (its Job prints the address)."
  type        = bool
  default     = false
}

variable "chain_allowed_accounts" {
  description = "Accounts allowed to send transactions on Besu (the tracer's chain address)."
  type        = list(string)
  default     = []
}

variable "repository_size" {
  description = "Size of the dataset repository volume."
  type        = string
  default     = "100Gi"
}

variable "repository_storage_class" {
  description = "StorageClass of the repository claim (ReadWriteMany); empty: the default."
  type        = string
  default     = ""
}

variable "repository_nfs" {
  description = "NFS export holding the repository; the chart then binds both namespaces to it."
  type = object({
    server = string
    path   = string
  })
  default = null
}

variable "platform_values" {
  description = "More values for the platform chart, merged over the module's."
  type        = any
  default     = {}
}
