# A multi-zone mesh: one mesh with strict mTLS, three zones (one per cloud) with their
# zone tokens as outputs, traffic permissions, a canary route and a locality failover
# order. See README.md next to this file.

terraform {
  required_providers {
    causeway = {
      source = "causeway/causeway"
    }
  }
}

# Address, token and CA come from CAUSEWAY_ADDR, CAUSEWAY_TOKEN and CAUSEWAY_CA_FILE
# (or CAUSEWAY_CA_CERT), as `causeway up` prints them.
provider "causeway" {}

variable "mesh" {
  description = "Name of the mesh."
  type        = string
  default     = "shop"
}

variable "zones" {
  description = "One zone per cloud region, in failover order."
  type        = list(string)
  default     = ["aws-eu-west-1", "gcp-europe-west4", "azure-westeurope"]
}

variable "token_rotation" {
  description = "Change to issue new zone tokens (the previous ones are revoked)."
  type        = string
  default     = "1"
}

resource "causeway_mesh" "shop" {
  name = var.mesh
  labels = {
    team = "platform"
  }

  mtls {
    mode = "Strict"
    backend {
      type     = "builtin"
      key_type = "ecdsaP256"
    }
  }
}

resource "causeway_zone" "cloud" {
  for_each = toset(var.zones)

  name           = each.value
  labels         = { cloud = split("-", each.value)[0] }
  token_rotation = var.token_rotation
}

# Web may call backend; nothing else may (the mesh-wide default denies under Strict mTLS).
resource "causeway_mesh_traffic_permission" "backend_from_web" {
  mesh = causeway_mesh.shop.name
  name = "backend-from-web"

  target_ref {
    kind = "MeshService"
    name = "backend"
  }
  from {
    target_ref {
      kind = "MeshService"
      name = "web"
    }
    default {
      action = "Allow"
    }
  }
}

resource "causeway_mesh_traffic_permission" "web_from_gateway" {
  mesh = causeway_mesh.shop.name
  name = "web-from-gateway"

  target_ref {
    kind = "MeshService"
    name = "web"
  }
  from {
    target_ref {
      kind = "MeshService"
      name = "gateway"
    }
    default {
      action = "Allow"
    }
  }
}

# A canary: 90% of backend's /api traffic to v1, 10% to v2.
resource "causeway_mesh_http_route" "backend_canary" {
  mesh = causeway_mesh.shop.name
  name = "backend-canary"

  target_ref {
    kind = "Mesh"
  }
  to {
    target_ref {
      kind = "MeshService"
      name = "backend"
    }
    rules {
      matches {
        path {
          type  = "PathPrefix"
          value = "/api"
        }
      }
      default {
        backend_refs {
          kind   = "MeshServiceSubset"
          name   = "backend"
          tags   = { version = "v1" }
          weight = 90
        }
        backend_refs {
          kind   = "MeshServiceSubset"
          name   = "backend"
          tags   = { version = "v2" }
          weight = 10
        }
      }
    }
  }
}

# Stay in the local zone; when it fails, go to the next zone in var.zones order.
resource "causeway_mesh_load_balancing_strategy" "backend_locality" {
  mesh = causeway_mesh.shop.name
  name = "backend-locality"

  to {
    target_ref {
      kind = "MeshService"
      name = "backend"
    }
    default {
      load_balancer {
        type = "LeastRequest"
      }
      locality_awareness {
        cross_zone {
          dynamic "failover" {
            for_each = var.zones
            content {
              from {
                zones = [failover.value]
              }
              to {
                type  = "Only"
                zones = [for z in var.zones : z if z != failover.value]
              }
            }
          }
          failover_threshold {
            percentage = "70"
          }
        }
      }
    }
  }
}

resource "causeway_mesh_timeout" "backend" {
  mesh = causeway_mesh.shop.name
  name = "backend-timeouts"

  target_ref {
    kind = "Mesh"
  }
  to {
    target_ref {
      kind = "MeshService"
      name = "backend"
    }
    default {
      connection_timeout = "2s"
      http {
        request_timeout = "5s"
      }
    }
  }
}

output "zone_tokens" {
  description = "Zone tokens, one per zone: pass each to that zone's `causeway zone-cp` install."
  value       = { for name, z in causeway_zone.cloud : name => z.token }
  sensitive   = true
}

output "mesh" {
  value = causeway_mesh.shop.name
}
