# The platform on a cluster you already have, reached through a kubeconfig.
#   terraform init && terraform apply -var portal_hostname=vre.example.org \
#     -var database_url=postgresql://vre:...@db.example.org:5432/vre

variable "kubeconfig_path" {
  description = "kubeconfig of the cluster."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "Context in that kubeconfig (empty: its current one)."
  type        = string
  default     = ""
}

variable "portal_hostname" {
  description = "Host name of the portal."
  type        = string
}

variable "database_url" {
  description = "postgresql:// URL of the platform's database."
  type        = string
  sensitive   = true
}

provider "kubernetes" {
  config_path    = var.kubeconfig_path
  config_context = var.kube_context == "" ? null : var.kube_context
}

provider "helm" {
  kubernetes = {
    config_path    = var.kubeconfig_path
    config_context = var.kube_context == "" ? null : var.kube_context
  }
}

module "vre" {
  source = "../.."

  portal_hostname = var.portal_hostname
  database_url    = var.database_url
  image_tag       = "0.1.0"
}

output "portal_url" {
  value = module.vre.portal_url
}
