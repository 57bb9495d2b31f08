# Stands the VRE platform up on an existing Kubernetes cluster: the namespaces, the
# Secrets made from sensitive inputs, the Besu network and the platform release.

locals {
  charts        = "${path.module}/../vre_charts"
  chain_ns      = var.besu_enabled ? var.chain_namespace : null
  besu_release  = "${var.release_name}-besu"
  # The besu chart names its objects <release>-vre-besu unless the release says vre-besu.
  besu_fullname = strcontains(local.besu_release, "vre-besu") ? local.besu_release : "${local.besu_release}-vre-besu"
  chain_url     = var.besu_enabled ? "http://${substr(local.besu_fullname, 0, 40)}-rpc.${var.chain_namespace}.svc:8545" : var.chain_url
  portal_url    = "https://${var.portal_hostname}"
  namespaces    = var.besu_enabled ? [var.platform_namespace, var.workloads_namespace, var.chain_namespace] : [var.platform_namespace, var.workloads_namespace]

  platform_values = {
    image = {
      repository = var.services_image
      tag        = var.image_tag
    }
    publicUrl = local.portal_url
    ingress = {
      enabled   = true
      className = var.ingress_class_name
      host      = var.portal_hostname
      tls = {
        enabled    = true
        secretName = var.tls_secret_name
      }
    }
    database = {
      existingSecret    = kubernetes_secret_v1.connections.metadata[0].name
      existingSecretKey = "database-url"
    }
    elasticsearch = {
      enabled           = var.elasticsearch_url != ""
      existingSecret    = kubernetes_secret_v1.connections.metadata[0].name
      existingSecretKey = "elasticsearch-url"
    }
    identity = {
      provider = var.keycloak_url == "" ? "portal" : "keycloak"
      keycloak = {
        url      = var.keycloak_url
        realm    = var.keycloak_realm
        clientId = var.keycloak_client_id
        clientSecret = {
          existingSecret = var.keycloak_client_secret == "" ? "" : kubernetes_secret_v1.connections.metadata[0].name
          key            = "keycloak-client-secret"
        }
      }
    }
    chain = {
      url            = local.chain_url
      contract       = var.chain_contract
      deployContract = var.deploy_chain_contract
    }
    repository = {
      size         = var.repository_size
      storageClass = var.repository_storage_class
      nfs = {
        server = var.repository_nfs == null ? "" : var.repository_nfs.server
        path   = var.repository_nfs == null ? "" : var.repository_nfs.path
      }
    }
    workloads = {
      namespace = var.workloads_namespace
    }
    networkPolicy = {
      ingressController = {
        namespaceSelector = {
          matchLabels = { "kubernetes.io/metadata.name" = var.ingress_controller_namespace }
        }
      }
    }
  }

  besu_values = {
    validators = [for v in var.besu_validators : { address = v.address, publicKey = v.public_key }]
    nodeKeys = {
      existingSecret = var.besu_node_keys_secret
    }
    permissions = {
      accounts = var.chain_allowed_accounts
    }
    rpc = {
      allowFrom = [{
        namespaceSelector = {
          matchLabels = { "kubernetes.io/metadata.name" = var.platform_namespace }
        }
        podSelector = {
          matchExpressions = [{
            key      = "app.kubernetes.io/component"
            operator = "In"
            values   = ["tracer", "anchor-worker", "chain-deploy"]
          }]
        }
      }]
    }
  }
}

resource "kubernetes_namespace_v1" "this" {
  for_each = var.create_namespaces ? toset(local.namespaces) : toset([])

  metadata {
    name = each.value
    labels = {
      "app.kubernetes.io/part-of"          = "vre"
      "pod-security.kubernetes.io/enforce" = "restricted"
      "pod-security.kubernetes.io/audit"   = "restricted"
    }
  }
}

# Connection URLs and the OIDC client secret: Kubernetes Secrets, referenced by name.
resource "kubernetes_secret_v1" "connections" {
  metadata {
    name      = "${var.release_name}-connections-tf"
    namespace = var.platform_namespace
    labels    = { "app.kubernetes.io/part-of" = "vre" }
  }
  type = "Opaque"
  data = {
    for key, value in {
      "database-url"           = var.database_url
      "elasticsearch-url"      = var.elasticsearch_url
      "keycloak-client-secret" = var.keycloak_client_secret
    } : key => value if value != ""
  }

  depends_on = [kubernetes_namespace_v1.this]
}

resource "helm_release" "besu" {
  count = var.besu_enabled ? 1 : 0

  name             = local.besu_release
  namespace        = var.chain_namespace
  chart            = "${local.charts}/besu"
  create_namespace = false
  values           = [yamlencode(local.besu_values)]
  # With no validators yet there is nothing to wait for.
  wait = length(var.besu_validators) > 0

  depends_on = [kubernetes_namespace_v1.this]
}

resource "helm_release" "platform" {
  name             = var.release_name
  namespace        = var.platform_namespace
  chart            = "${local.charts}/platform"
  create_namespace = false
  values           = [yamlencode(local.platform_values), yamlencode(var.platform_values)]
  # The migration hook runs before the services start; give it and the rollout time.
  timeout = 900

  depends_on = [kubernetes_namespace_v1.this, helm_release.besu]
}
