# payrelay on Google Cloud: Ingest (public; providers call it) and Deliver (private; only Cloud
# Tasks' invoker identity may call it), 2nd gen Cloud Functions over Firestore and a Cloud Tasks
# queue (or several) per game. Secrets live in Secret Manager and reach the functions as secret environment
# variables; no secret value appears in this file, its variables or its state outputs.
#
# Build the source first (infra/README.md, "Deploy"): go run ./infra/deploy/zipsource -o dist/payrelay-source.zip

terraform {
  required_version = ">= 1.6"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

# ---------------------------------------------------------------------------------------------
# Variables

variable "project_id" {
  description = "The Google Cloud project to deploy into."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project id: 6-30 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  description = "Region of the functions and the queue, e.g. asia-east1."
  type        = string
  default     = "asia-east1"
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must be a Google Cloud region such as asia-east1."
  }
}

variable "firestore_location" {
  description = "Location of the Firestore database (a region such as asia-east1, or a multi-region such as nam5). Fixed once created."
  type        = string
  default     = "asia-east1"
  validation {
    condition     = can(regex("^([a-z]+-[a-z]+[0-9]|nam5|eur3)$", var.firestore_location))
    error_message = "firestore_location must be a region or the multi-regions nam5 or eur3."
  }
}

variable "name" {
  description = "Prefix of every resource name."
  type        = string
  default     = "payrelay"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,15}$", var.name))
    error_message = "name must be 3-16 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "games" {
  description = <<-EOT
    The studio's games, by name: where each one's notifications go and the Cloud Tasks queues
    they go through. Each game gets its own queue(s), so one game's failing or hanging server can
    only use its own dispatch capacity. A queue dispatches at most 500 tasks/s (Cloud Tasks'
    per-queue maximum, the default here, so a launch burst drains at full speed); what protects
    the game server is max_concurrent_dispatches (100 requests in flight at most) and its own
    429 Retry-After, which payrelay honours. peak_per_second, the game's expected peak of
    payments per second, sizes it: ceil(peak / 500) shards (set shards to override). Signing
    secrets are not here: each game's go in the Secret Manager secret <name>-game-<game>-secrets
    (infra/README.md, "Deploy").

    `sandbox`, optional, is the game's sandbox endpoint (a staging server): its own URL, its own
    queue(s) named <name>-<game>-s<k>, and its own signing secrets in <name>-sandbox-<game>-secrets
    (a staging server must not hold production secrets). Sandbox and test payments go there and
    nowhere else; a game without it has them stored and shown, never posted.
  EOT
  type = map(object({
    url                       = string
    timeout                   = optional(string, "10s")
    allow_private             = optional(bool, false)
    peak_per_second           = optional(number, 500)
    shards                    = optional(number) # default ceil(peak_per_second / 500)
    max_dispatches_per_second = optional(number, 500)
    max_concurrent_dispatches = optional(number, 100)
    # Identities of the game's own servers allowed to query its orders (补单) through the Query
    # function: service accounts only (the function checks the email Cloud Run verified).
    query_callers = optional(list(string), [])
    sandbox = optional(object({
      url                       = string
      timeout                   = optional(string, "10s")
      allow_private             = optional(bool, false)
      shards                    = optional(number, 1)
      max_dispatches_per_second = optional(number, 500)
      max_concurrent_dispatches = optional(number, 100)
    }))
  }))
  validation {
    condition     = length(var.games) > 0
    error_message = "games must configure at least one game."
  }
  validation {
    condition     = alltrue([for g, c in var.games : can(regex("^[a-z][a-z0-9-]{0,29}$", g))])
    error_message = "each game's name must be 1-30 lowercase letters, digits or hyphens, starting with a letter."
  }
  validation {
    condition     = alltrue([for g, c in var.games : can(regex("^https://[^/\\s]+(/\\S*)?$", c.url))])
    error_message = "each game's url must be an https:// URL."
  }
  validation {
    condition     = alltrue([for g, c in var.games : can(regex("^([1-9]|10)s$|^[1-9][0-9]{0,3}ms$", c.timeout))])
    error_message = "each game's timeout must be at most 10s, e.g. 10s or 2500ms."
  }
  validation {
    condition     = alltrue([for g, c in var.games : c.shards == null ? true : c.shards >= 1 && c.shards <= 16 && floor(c.shards) == c.shards])
    error_message = "each game's shards must be a whole number from 1 to 16."
  }
  validation {
    condition     = alltrue([for g, c in var.games : c.peak_per_second > 0 && c.peak_per_second <= 8000])
    error_message = "each game's peak_per_second must be in (0, 8000] (16 queues of 500/s)."
  }
  validation {
    condition     = alltrue(flatten([for g, c in var.games : [for m in c.query_callers : can(regex("^serviceAccount:[^\\s@]+@[^\\s@]+$", m))]]))
    error_message = "each game's query_callers must be serviceAccount:<email> members."
  }
  validation {
    condition     = alltrue([for g, c in var.games : c.max_dispatches_per_second > 0 && c.max_dispatches_per_second <= 500 && c.max_concurrent_dispatches >= 1 && c.max_concurrent_dispatches <= 5000])
    error_message = "each game's max_dispatches_per_second must be in (0, 500] and max_concurrent_dispatches in [1, 5000]."
  }
  validation {
    condition = alltrue([for g, c in var.games : c.sandbox == null ? true : (
      can(regex("^https://[^/\\s]+(/\\S*)?$", c.sandbox.url)) && trimsuffix(lower(c.sandbox.url), "/") != trimsuffix(lower(c.url), "/") &&
      can(regex("^([1-9]|10)s$|^[1-9][0-9]{0,3}ms$", c.sandbox.timeout)) &&
      c.sandbox.shards >= 1 && c.sandbox.shards <= 16 && floor(c.sandbox.shards) == c.sandbox.shards &&
      c.sandbox.max_dispatches_per_second > 0 && c.sandbox.max_dispatches_per_second <= 500 &&
      c.sandbox.max_concurrent_dispatches >= 1 && c.sandbox.max_concurrent_dispatches <= 5000
    )])
    error_message = "each game's sandbox needs an https:// url that is not the game's production url, and timeout, shards and rates as for the game itself."
  }
}

variable "ladder" {
  description = "Waits before each notification, comma-separated Go durations (Alipay's ladder by default)."
  type        = string
  default     = "0s,2m,10m,10m,1h,2h,6h,15h"
  validation {
    condition     = can(regex("^\\s*[0-9.]+(ns|us|ms|s|m|h)([0-9.]+(ns|us|ms|s|m|h))*(\\s*,\\s*[0-9.]+(ns|us|ms|s|m|h)([0-9.]+(ns|us|ms|s|m|h))*)*\\s*$", var.ladder))
    error_message = "ladder must be a comma-separated list of non-negative Go durations such as 0s,2m,1h."
  }
}

variable "source_zip" {
  description = "Path of the function source archive written by `go run ./infra/deploy/zipsource`."
  type        = string
  default     = "dist/payrelay-source.zip"
}

variable "function_memory" {
  description = "Memory of each function."
  type        = string
  default     = "256Mi"
  validation {
    condition     = contains(["128Mi", "256Mi", "512Mi", "1Gi", "2Gi"], var.function_memory)
    error_message = "function_memory must be one of 128Mi, 256Mi, 512Mi, 1Gi, 2Gi."
  }
}

variable "reconcile_memory" {
  description = "Memory of the functions that reconcile bills (Reconcile, and Admin for operators' runs): a bill is streamed, and a day holds 34 bytes per stored payment live and peaks at 48 to 67 (measured: a 5,000,000-row day peaks at 232 MiB under GOMEMLIMIT, 320 MiB without); three quarters of it at 64 bytes a payment bound the day (RECONCILE_MAX_DAY_PAYMENTS): 512Mi 6.3 million, 1Gi 12.6 million, 2Gi 25.2 million, 4Gi 50.3 million stored payments and refunds. A larger day is reported (reconcile_failed, too_large), never killed half way."
  type        = string
  default     = "1Gi"
  validation {
    condition     = contains(["512Mi", "1Gi", "2Gi", "4Gi"], var.reconcile_memory)
    error_message = "reconcile_memory must be one of 512Mi, 1Gi, 2Gi, 4Gi."
  }
}

variable "function_timeout_seconds" {
  description = "Request timeout of each function. Deliver needs more than the 10 s game-server timeout."
  type        = number
  default     = 60
  validation {
    condition     = var.function_timeout_seconds >= 30 && var.function_timeout_seconds <= 540
    error_message = "function_timeout_seconds must be between 30 and 540."
  }
}

variable "ingest_max_instances" {
  description = "Upper bound of Ingest instances."
  type        = number
  default     = 20
  validation {
    condition     = var.ingest_max_instances >= 1 && var.ingest_max_instances <= 1000
    error_message = "ingest_max_instances must be between 1 and 1000."
  }
}

variable "deliver_max_instances" {
  description = "Upper bound of Deliver instances (with the queue's rate limits, how hard the game server is hit)."
  type        = number
  default     = 20
  validation {
    condition     = var.deliver_max_instances >= 1 && var.deliver_max_instances <= 1000
    error_message = "deliver_max_instances must be between 1 and 1000."
  }
}

variable "operators" {
  description = "Principals who may open the Admin function (the operators' API), e.g. [\"user:ops@studio.example\", \"group:payments-oncall@studio.example\"]."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for m in var.operators : can(regex("^(user|group|serviceAccount|domain):[^\\s]+$", m))])
    error_message = "each operator must be an IAM member: user:, group:, serviceAccount: or domain:."
  }
}

variable "sweep_schedule" {
  description = "Cron schedule of the sweeper (Cloud Scheduler), in UTC."
  type        = string
  default     = "* * * * *"
}

variable "reconcile_schedule" {
  description = "Cron schedule of the daily reconciliation against the providers' bills, in reconcile_time_zone (both providers make the day's bill by 10:00 China Standard Time)."
  type        = string
  default     = "0 10 * * *"
}

variable "recover_schedule" {
  description = "Cron schedule of the recovery sweeps (Stripe's undelivered events, for Stripe accounts with api_keys), in UTC: a notification a provider failed to deliver is relayed within one period."
  type        = string
  default     = "23 * * * *"
}

variable "reconcile_time_zone" {
  description = "Time zone of reconcile_schedule (tz database name)."
  type        = string
  default     = "Asia/Shanghai"
}

variable "notification_channels" {
  description = "Cloud Monitoring notification channels (projects/P/notificationChannels/ID) the alerts go to; none: no alert policy is created."
  type        = list(string)
  default     = []
}

variable "alert_on_sandbox" {
  description = "Also alert on sandbox notifications' dead letters, failing game servers and healed tasks. Off: a staging server's failures stay on the dashboards and never page anyone. Environment mismatches (a configuration mistake) always alert."
  type        = bool
  default     = false
}

variable "generic_sandbox_secret" {
  description = "Create <name>-ingest-sandbox-secrets, whose secrets verify generic-format notifications as sandbox only (INGEST_SANDBOX_SECRETS), for a test harness that must never make a production payment. Add a version before deploying."
  type        = bool
  default     = false
}

variable "apple_api_key" {
  description = "Create the secret APPLE_API_KEY (the App Store In-App Purchase key, .p8 PEM) for the apps with api access in PROVIDER_CONFIG: the notification-history sweep, the order query by transactionId, the dashboard's test notification. Its value is added with gcloud, never through terraform."
  type        = bool
  default     = false
}

variable "googleplay" {
  description = "Google Play's real-time developer notifications: a Pub/Sub topic Google Play publishes to (set it in Play Console → Monetization setup), pushed to Ingest?provider=googleplay with an OIDC token of a dedicated service account, retried with backoff and dead-lettered after 20 attempts. PROVIDER_CONFIG googleplay's audience and service_account are the outputs googleplay_push_audience and googleplay_push_service_account."
  type        = bool
  default     = false
}

variable "game_failure_threshold" {
  description = "Alert when a game server fails more than this share of its attempts over 10 minutes."
  type        = number
  default     = 0.5
  validation {
    condition     = var.game_failure_threshold > 0 && var.game_failure_threshold <= 1
    error_message = "game_failure_threshold must be in (0, 1]."
  }
}

variable "log_level" {
  description = "Functions' log level: debug, info, warn or error."
  type        = string
  default     = "info"
  validation {
    condition     = contains(["debug", "info", "warn", "error"], var.log_level)
    error_message = "log_level must be debug, info, warn or error."
  }
}

# ---------------------------------------------------------------------------------------------
# APIs (left enabled on destroy: other things in the project may use them)

locals {
  apis = toset(concat([
    "cloudfunctions.googleapis.com",
    "run.googleapis.com",
    "cloudbuild.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudtasks.googleapis.com",
    "firestore.googleapis.com",
    "secretmanager.googleapis.com",
    "iam.googleapis.com",
    "storage.googleapis.com",
    "cloudscheduler.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    ], var.googleplay ? ["pubsub.googleapis.com", "androidpublisher.googleapis.com"] : [],
  ))
}

resource "google_project_service" "api" {
  for_each           = local.apis
  service            = each.value
  disable_on_destroy = false
}

data "google_project" "this" {
  project_id = var.project_id
}

# ---------------------------------------------------------------------------------------------
# Firestore and the queue

# Every composite index the store's queries use (infra/store.Indexes; a Go test checks the two
# lists agree): the sweeper reads each game's overdue payments in turn; operators' lists filter
# on a tag and, optionally, environment, game and provider, newest first. The sweeper's last
# query, on due_at alone, runs on Firestore's automatic single-field index.
locals {
  firestore_indexes = [
    # The sweeper's pages: one game's overdue payments, oldest due first.
    [{ path = "game", order = "ASCENDING" }, { path = "due_at", order = "ASCENDING" }],
    [{ path = "tags", array_config = "CONTAINS" }, { path = "received_at", order = "DESCENDING" }],
    [{ path = "tags", array_config = "CONTAINS" }, { path = "provider", order = "ASCENDING" }, { path = "received_at", order = "DESCENDING" }],
    [{ path = "tags", array_config = "CONTAINS" }, { path = "game", order = "ASCENDING" }, { path = "received_at", order = "DESCENDING" }],
    [{ path = "tags", array_config = "CONTAINS" }, { path = "game", order = "ASCENDING" }, { path = "provider", order = "ASCENDING" }, { path = "received_at", order = "DESCENDING" }],
    [{ path = "tags", array_config = "CONTAINS" }, { path = "environment", order = "ASCENDING" }, { path = "received_at", order = "DESCENDING" }],
    [{ path = "tags", array_config = "CONTAINS" }, { path = "environment", order = "ASCENDING" }, { path = "provider", order = "ASCENDING" }, { path = "received_at", order = "DESCENDING" }],
    [{ path = "tags", array_config = "CONTAINS" }, { path = "environment", order = "ASCENDING" }, { path = "game", order = "ASCENDING" }, { path = "received_at", order = "DESCENDING" }],
    [{ path = "tags", array_config = "CONTAINS" }, { path = "environment", order = "ASCENDING" }, { path = "game", order = "ASCENDING" }, { path = "provider", order = "ASCENDING" }, { path = "received_at", order = "DESCENDING" }],
  ]
}

resource "google_firestore_index" "payments" {
  for_each   = { for i, idx in local.firestore_indexes : join(",", [for f in idx : f.path]) => idx }
  database   = google_firestore_database.payments.name
  collection = "payments"
  dynamic "fields" {
    for_each = each.value
    content {
      field_path   = fields.value.path
      order        = lookup(fields.value, "order", null)
      array_config = lookup(fields.value, "array_config", null)
    }
  }
}

resource "google_firestore_database" "payments" {
  name                    = "(default)"
  location_id             = var.firestore_location
  type                    = "FIRESTORE_NATIVE"
  delete_protection_state = "DELETE_PROTECTION_ENABLED"
  deletion_policy         = "ABANDON"
  depends_on              = [google_project_service.api]
}

locals {
  # Each game's shard count: as set, or what its expected peak needs at 500 dispatches/s a queue.
  game_shards = { for g, c in var.games : g => c.shards != null ? c.shards : max(1, ceil(c.peak_per_second / 500)) }
  # One entry per queue: each game's shards, named <name>-<game>-<k>, and its sandbox's,
  # <name>-<game>-s<k>. The last segment (digits, or s and digits) keeps the two apart for any
  # game names: game "a"'s sandbox a-s0 is never game "a-s0"'s production queue a-s0-0.
  game_queues = merge(
    merge([for g, c in var.games : {
      for k in range(local.game_shards[g]) : "${g}-${k}" => { game = g, environment = "production", config = c }
    }]...),
    merge([for g, c in var.games : c.sandbox == null ? {} : {
      for k in range(c.sandbox.shards) : "${g}-s${k}" => { game = g, environment = "sandbox", config = c.sandbox }
    }]...),
  )
}

# A game's queues (and its sandbox's). The ladder lives in Firestore and the functions; a queue only retries
# failures of Deliver itself (store or queue unavailable, a live lease). It must never drop a
# task while its notification is pending: unlimited attempts, bounded backoff. Its rate limits
# are the game's: a hanging game server holds at most max_concurrent_dispatches Deliver
# requests, all from its own queues.
resource "google_cloud_tasks_queue" "game" {
  for_each = local.game_queues
  name     = "${var.name}-${each.key}"
  location = var.region
  rate_limits {
    max_dispatches_per_second = each.value.config.max_dispatches_per_second
    max_concurrent_dispatches = each.value.config.max_concurrent_dispatches
  }
  retry_config {
    max_attempts       = -1
    max_retry_duration = "0s"
    min_backoff        = "1s"
    max_backoff        = "60s"
    max_doublings      = 5
  }
  depends_on = [google_project_service.api]
}

# ---------------------------------------------------------------------------------------------
# Identities and least privilege

resource "google_service_account" "runtime" {
  account_id   = "${var.name}-runtime"
  display_name = "payrelay functions runtime"
  description  = "Identity of Ingest and Deliver: Firestore, enqueue on the games' queues, read payrelay's secrets."
}

resource "google_service_account" "scheduler" {
  account_id   = "${var.name}-scheduler"
  display_name = "payrelay sweeper schedule"
  description  = "Identity Cloud Scheduler calls the Sweep and Reconcile functions with; may invoke those two only."
}

resource "google_service_account" "invoker" {
  account_id   = "${var.name}-invoker"
  display_name = "payrelay Cloud Tasks invoker"
  description  = "Identity Cloud Tasks signs OIDC tokens with when it calls Deliver; may invoke Deliver only."
}

resource "google_project_iam_member" "runtime_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.runtime.email}"
}

# Bulk replays' steps: their own queue, so an operator's replay of thousands never competes
# with a game's deliveries. One step at a time is plenty (each replays a page at REPLAY_RATE).
resource "google_cloud_tasks_queue" "ops" {
  name     = "${var.name}-ops"
  location = var.region
  rate_limits {
    max_dispatches_per_second = 5
    max_concurrent_dispatches = 5
  }
  retry_config {
    max_attempts       = -1
    max_retry_duration = "0s"
    min_backoff        = "1s"
    max_backoff        = "60s"
    max_doublings      = 5
  }
  depends_on = [google_project_service.api]
}

resource "google_cloud_tasks_queue_iam_member" "runtime_enqueue_ops" {
  name     = google_cloud_tasks_queue.ops.name
  location = google_cloud_tasks_queue.ops.location
  role     = "roles/cloudtasks.enqueuer"
  member   = "serviceAccount:${google_service_account.runtime.email}"
}

# Enqueue on the games' queues, each granted on the queue itself, nothing project-wide.
resource "google_cloud_tasks_queue_iam_member" "runtime_enqueue" {
  for_each = google_cloud_tasks_queue.game
  name     = each.value.name
  location = each.value.location
  role     = "roles/cloudtasks.enqueuer"
  member   = "serviceAccount:${google_service_account.runtime.email}"
}

# Looking each queue up as a function starts (functions.CheckQueues: a queue deleted by mistake
# stops the deploy, named) needs cloudtasks.queues.get, which roles/cloudtasks.enqueuer lacks
# and roles/cloudtasks.viewer would widen to reading every task: a role of that one
# permission, granted queue by queue.
resource "google_project_iam_custom_role" "queue_getter" {
  role_id     = "${replace(var.name, "-", "_")}_queue_getter"
  title       = "payrelay: look a queue up"
  description = "Only cloudtasks.queues.get: payrelay's functions check at start that their queues exist."
  permissions = ["cloudtasks.queues.get"]
}

resource "google_cloud_tasks_queue_iam_member" "runtime_get" {
  for_each = merge({ for k, q in google_cloud_tasks_queue.game : k => q.name }, { ops = google_cloud_tasks_queue.ops.name })
  name     = each.value
  location = var.region
  role     = google_project_iam_custom_role.queue_getter.name
  member   = "serviceAccount:${google_service_account.runtime.email}"
}

# CreateTask with an OIDC token for the invoker account requires actAs on that account.
resource "google_service_account_iam_member" "runtime_acts_as_invoker" {
  service_account_id = google_service_account.invoker.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.runtime.email}"
}

# ---------------------------------------------------------------------------------------------
# Secrets: created here, their values added by the operator (infra/README.md, "Deploy")

locals {
  # Keys and ids never collide: "sandbox-<game>" and <name>-sandbox-<game>-secrets cannot be
  # another game's "game-<game>" or <name>-game-<game>-secrets.
  secrets = merge({
    ingest    = "${var.name}-ingest-secrets"
    providers = "${var.name}-provider-config"
    }, var.generic_sandbox_secret ? { ingest-sandbox = "${var.name}-ingest-sandbox-secrets" } : {},
    var.apple_api_key ? { apple-api-key = "${var.name}-apple-api-key" } : {},
    { for g, c in var.games : "game-${g}" => "${var.name}-game-${g}-secrets" },
  { for g, c in var.games : "sandbox-${g}" => "${var.name}-sandbox-${g}-secrets" if c.sandbox != null })
}

resource "google_secret_manager_secret" "secret" {
  for_each  = local.secrets
  secret_id = each.value
  replication {
    auto {}
  }
  depends_on = [google_project_service.api]
}

resource "google_secret_manager_secret_iam_member" "runtime_reads" {
  for_each  = google_secret_manager_secret.secret
  secret_id = each.value.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.runtime.email}"
}

# ---------------------------------------------------------------------------------------------
# Source and functions

resource "google_storage_bucket" "source" {
  name                        = "${var.project_id}-${var.name}-source"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true
  depends_on                  = [google_project_service.api]
}

resource "google_storage_bucket_object" "source" {
  # Named by content, so a new build redeploys the functions and an unchanged one does not.
  name   = "payrelay-${filesha256(var.source_zip)}.zip"
  bucket = google_storage_bucket.source.name
  source = var.source_zip
}

locals {
  deliver_name = "${var.name}-deliver"
  ingest_name  = "${var.name}-ingest"
  # A 2nd gen function is served by the Cloud Run service of the same name, whose deterministic
  # URL is known before it exists: Deliver can put its own URL on the tasks it creates without
  # a dependency cycle, and that URL is the audience Cloud Run checks on the OIDC token.
  deliver_url = "https://${local.deliver_name}-${data.google_project.this.number}.${var.region}.run.app"

  # Each game's queue paths, projects/P/locations/L/queues/Q.
  queue_paths = { for g, c in var.games : g => [
    for k in range(local.game_shards[g]) : "projects/${var.project_id}/locations/${var.region}/queues/${google_cloud_tasks_queue.game["${g}-${k}"].name}"
  ] }
  sandbox_queue_paths = { for g, c in var.games : g => [
    for k in range(c.sandbox.shards) : "projects/${var.project_id}/locations/${var.region}/queues/${google_cloud_tasks_queue.game["${g}-s${k}"].name}"
  ] if c.sandbox != null }
  # GAMES: each game's URL, timeout and queue paths, and its sandbox's, as infra/config reads them.
  games_json = jsonencode([for g, c in var.games : merge({
    name          = g
    url           = c.url
    timeout       = c.timeout
    allow_private = c.allow_private
    queues        = local.queue_paths[g]
    }, c.sandbox == null ? {} : {
    sandbox = {
      url           = c.sandbox.url
      timeout       = c.sandbox.timeout
      allow_private = c.sandbox.allow_private
      queues        = local.sandbox_queue_paths[g]
    }
  })])

  # Every variable infra/config reads in the cloud (the emulator hosts are for local runs only).
  memory_mib           = { "128Mi" = 128, "256Mi" = 256, "512Mi" = 512, "1Gi" = 1024, "2Gi" = 2048, "4Gi" = 4096 }
  reconcile_memory_mib = local.memory_mib[var.reconcile_memory]
  function_env = {
    PROJECT_ID          = var.project_id
    FIRESTORE_DATABASE  = google_firestore_database.payments.name
    PAYMENTS_COLLECTION = "payments"
    DELIVER_URL         = local.deliver_url
    TASKS_INVOKER_SA    = google_service_account.invoker.email
    TASKS_OIDC_AUDIENCE = local.deliver_url
    GAMES               = local.games_json
    LADDER              = var.ladder
    LADDER_COMPRESSION  = "1"
    DELIVER_LEASE       = "60s"
    SWEEP_MARGIN        = "2m"
    OPS_QUEUE           = "projects/${var.project_id}/locations/${var.region}/queues/${google_cloud_tasks_queue.ops.name}"
    REPLAY_RATE         = "20"
    # The largest stored day a reconciliation loads, from reconcile_memory: three quarters of
    # it at 64 bytes per stored payment (the heap's measured peak: 48 under GOMEMLIMIT, 67
    # without; 34 of them live), so that at the bound the live day is under half of
    # GOMEMLIMIT. A larger day is reported, never killed half way.
    RECONCILE_MAX_DAY_PAYMENTS = tostring(floor(local.reconcile_memory_mib * 1048576 * 0.75 / 64))
    LOG_LEVEL                  = var.log_level
    # Each game server identity allowed to query orders, mapped to its one game.
    QUERY_CALLERS = jsonencode(merge({}, [for g, c in var.games : { for m in c.query_callers : trimprefix(m, "serviceAccount:") => g }]...))
  }
  function_secret_env = merge({
    INGEST_SECRETS  = google_secret_manager_secret.secret["ingest"].secret_id
    PROVIDER_CONFIG = google_secret_manager_secret.secret["providers"].secret_id
    }, var.generic_sandbox_secret ? { INGEST_SANDBOX_SECRETS = google_secret_manager_secret.secret["ingest-sandbox"].secret_id } : {},
    var.apple_api_key ? { APPLE_API_KEY = google_secret_manager_secret.secret["apple-api-key"].secret_id } : {},
  )
  # Each game's signing secrets: GAME_SECRETS_<GAME>, upper case, - as _ (config.GameSecretsVar).
  game_secret_env = merge(
    { for g, c in var.games : "GAME_SECRETS_${upper(replace(g, "-", "_"))}" => google_secret_manager_secret.secret["game-${g}"].secret_id },
    # Each sandbox's: GAME_SANDBOX_SECRETS_<GAME> (config.GameSandboxSecretsVar).
    { for g, c in var.games : "GAME_SANDBOX_SECRETS_${upper(replace(g, "-", "_"))}" => google_secret_manager_secret.secret["sandbox-${g}"].secret_id if c.sandbox != null },
  )
  # Reconcile downloads and compares whole bills: it gets the longest timeout Cloud Functions
  # allows for an HTTP function fed by Cloud Scheduler, one instance and the memory of a whole
  # bill; Admin the same timeout and memory, for operators' reconciliations.
  functions = {
    ingest    = { name = local.ingest_name, entry_point = "Ingest", max_instances = var.ingest_max_instances, timeout = var.function_timeout_seconds, memory = var.function_memory }
    deliver   = { name = local.deliver_name, entry_point = "Deliver", max_instances = var.deliver_max_instances, timeout = var.function_timeout_seconds, memory = var.function_memory }
    admin     = { name = "${var.name}-admin", entry_point = "Admin", max_instances = 3, timeout = 540, memory = var.reconcile_memory }
    sweep     = { name = "${var.name}-sweep", entry_point = "Sweep", max_instances = 1, timeout = var.function_timeout_seconds, memory = var.function_memory }
    reconcile = { name = "${var.name}-reconcile", entry_point = "Reconcile", max_instances = 1, timeout = 540, memory = var.reconcile_memory }
    query     = { name = "${var.name}-query", entry_point = "Query", max_instances = 3, timeout = var.function_timeout_seconds, memory = var.function_memory }
    # One sweep at a time: two would read and ingest the same events (harmless, but twice).
    recover = { name = "${var.name}-recover", entry_point = "Recover", max_instances = 1, timeout = 540, memory = var.function_memory }
  }
}

resource "google_cloudfunctions2_function" "fn" {
  for_each = local.functions
  name     = each.value.name
  location = var.region

  build_config {
    runtime     = "go126"
    entry_point = each.value.entry_point
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory                 = each.value.memory
    timeout_seconds                  = each.value.timeout
    max_instance_count               = each.value.max_instances
    max_instance_request_concurrency = 1
    service_account_email            = google_service_account.runtime.email
    ingress_settings                 = "ALLOW_ALL"
    all_traffic_on_latest_revision   = true
    # GOMEMLIMIT at nine tenths of the memory: Go's collector then works harder as the heap
    # nears the instance's memory instead of letting it reach twice the live heap (a large
    # reconciliation's day set is most of its heap), so a run stays inside its memory.
    environment_variables = merge(local.function_env, { GOMEMLIMIT = "${floor(local.memory_mib[each.value.memory] * 0.9)}MiB" })

    dynamic "secret_environment_variables" {
      for_each = merge(local.function_secret_env, local.game_secret_env)
      content {
        key        = secret_environment_variables.key
        project_id = var.project_id
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }

  depends_on = [
    google_project_service.api,
    google_secret_manager_secret_iam_member.runtime_reads,
    google_project_iam_member.runtime_firestore,
  ]
}

# Ingest is public: providers call it, and its safety is signature verification.
resource "google_cloud_run_service_iam_member" "ingest_public" {
  location = var.region
  service  = google_cloudfunctions2_function.fn["ingest"].service_config[0].service
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# Deliver is private: only the invoker identity, whose tokens Cloud Tasks signs, may call it.
resource "google_cloud_run_service_iam_member" "deliver_invoker" {
  location = var.region
  service  = google_cloudfunctions2_function.fn["deliver"].service_config[0].service
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.invoker.email}"
}

# Admin is private: only the operators may invoke it (infra/README.md: open it with
# `gcloud run services proxy payrelay-admin`).
resource "google_cloud_run_service_iam_member" "admin_operators" {
  for_each = toset(var.operators)
  location = var.region
  service  = google_cloudfunctions2_function.fn["admin"].service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value
}

# Sweep is private: only the scheduler's identity may invoke it.
resource "google_cloud_run_service_iam_member" "sweep_scheduler" {
  location = var.region
  service  = google_cloudfunctions2_function.fn["sweep"].service_config[0].service
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.scheduler.email}"
}

# Reconcile is private: only the scheduler's identity may invoke it (operators run one through
# Admin).
resource "google_cloud_run_service_iam_member" "reconcile_scheduler" {
  location = var.region
  service  = google_cloudfunctions2_function.fn["reconcile"].service_config[0].service
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.scheduler.email}"
}

# Recover is private: only the scheduler's identity may invoke it.
resource "google_cloud_run_service_iam_member" "recover_scheduler" {
  location = var.region
  service  = google_cloudfunctions2_function.fn["recover"].service_config[0].service
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.scheduler.email}"
}

# Query is private: only the game servers' identities listed in games.<game>.query_callers may
# invoke it, and QUERY_CALLERS confines each to its own game's orders. It can replay or cancel
# nothing (that is Admin's, the operators' only).
resource "google_cloud_run_service_iam_member" "query_callers" {
  for_each = toset(flatten([for g, c in var.games : c.query_callers]))
  location = var.region
  service  = google_cloudfunctions2_function.fn["query"].service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value
}

# The daily reconciliation, after the providers' bills are ready (10:00 in Shanghai). A run
# that fails (a bill not ready, a provider down) answers 5xx and is retried; running it again
# is safe.
resource "google_cloud_scheduler_job" "reconcile" {
  name             = "${var.name}-reconcile"
  region           = var.region
  schedule         = var.reconcile_schedule
  time_zone        = var.reconcile_time_zone
  attempt_deadline = "540s"
  retry_config {
    retry_count          = 5
    min_backoff_duration = "600s"
    max_backoff_duration = "3600s"
    max_doublings        = 2
  }
  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.fn["reconcile"].service_config[0].uri
    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = google_cloudfunctions2_function.fn["reconcile"].service_config[0].uri
    }
  }
  depends_on = [google_project_service.api]
}

# The recovery sweeps, hourly: what a provider failed to deliver (Stripe's undelivered events)
# is asked of the provider and relayed. A run that fails answers 5xx; its cursor stays, so the
# next one (or this job's retry) reads the same events again, idempotently.
resource "google_cloud_scheduler_job" "recover" {
  name             = "${var.name}-recover"
  region           = var.region
  schedule         = var.recover_schedule
  time_zone        = "Etc/UTC"
  attempt_deadline = "540s"
  retry_config {
    retry_count          = 2
    min_backoff_duration = "300s"
    max_backoff_duration = "900s"
  }
  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.fn["recover"].service_config[0].uri
    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = google_cloudfunctions2_function.fn["recover"].service_config[0].uri
    }
  }
  depends_on = [google_project_service.api]
}

# The sweeper, every minute: a notification whose task was lost waits minutes, never forever.
resource "google_cloud_scheduler_job" "sweep" {
  name             = "${var.name}-sweep"
  region           = var.region
  schedule         = var.sweep_schedule
  time_zone        = "Etc/UTC"
  attempt_deadline = "60s"
  retry_config {
    retry_count = 0 # the next minute's run is the retry
  }
  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.fn["sweep"].service_config[0].uri
    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = google_cloudfunctions2_function.fn["sweep"].service_config[0].uri
    }
  }
  depends_on = [google_project_service.api]
}

# ---------------------------------------------------------------------------------------------
# Google Play: RTDN through Pub/Sub (Google's "Real-time developer notifications": the topic,
# the grant to Google Play's publisher account, a push subscription to Ingest)

locals {
  googleplay_audience = "${google_cloudfunctions2_function.fn["ingest"].service_config[0].uri}/?provider=googleplay"
  pubsub_agent        = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_pubsub_topic" "googleplay" {
  count      = var.googleplay ? 1 : 0
  name       = "${var.name}-googleplay"
  depends_on = [google_project_service.api]
}

# Google Play publishes as its own account; nothing else may.
resource "google_pubsub_topic_iam_member" "googleplay_publisher" {
  count  = var.googleplay ? 1 : 0
  topic  = google_pubsub_topic.googleplay[0].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:google-play-developer-notifications@system.gserviceaccount.com"
}

resource "google_pubsub_topic" "googleplay_dead_letter" {
  count      = var.googleplay ? 1 : 0
  name       = "${var.name}-googleplay-dead-letter"
  depends_on = [google_project_service.api]
}

# The push's identity: its OIDC token is what Ingest verifies (audience and email).
resource "google_service_account" "pubsub_push" {
  count        = var.googleplay ? 1 : 0
  account_id   = "${var.name}-pubsub-push"
  display_name = "payrelay: Pub/Sub push of Google Play notifications to Ingest"
}

# Pub/Sub's service agent mints the push account's tokens and dead-letters what never lands.
resource "google_service_account_iam_member" "pubsub_push_token" {
  count              = var.googleplay ? 1 : 0
  service_account_id = google_service_account.pubsub_push[0].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  count  = var.googleplay ? 1 : 0
  topic  = google_pubsub_topic.googleplay_dead_letter[0].id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}

resource "google_pubsub_subscription" "googleplay" {
  count                = var.googleplay ? 1 : 0
  name                 = "${var.name}-googleplay-push"
  topic                = google_pubsub_topic.googleplay[0].id
  ack_deadline_seconds = 30
  # Pub/Sub keeps an unacknowledged notification 7 days; a purchase not acknowledged to Google
  # within 3 days is refunded, so an outage longer than that needs the voided-purchases sweep.
  message_retention_duration = "604800s"
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.googleplay_dead_letter[0].id
    max_delivery_attempts = 20
  }
  push_config {
    push_endpoint = local.googleplay_audience
    oidc_token {
      service_account_email = google_service_account.pubsub_push[0].email
      audience              = local.googleplay_audience
    }
  }
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  count        = var.googleplay ? 1 : 0
  subscription = google_pubsub_subscription.googleplay[0].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# The Play Developer API is called as the runtime account, which the studio invites in Play
# Console (Users and permissions: View financial data, Manage orders): no key file.
output "googleplay_topic" {
  description = "Google Play's RTDN topic: enter it in Play Console (Monetize → Monetization setup → Real-time developer notifications)."
  value       = var.googleplay ? google_pubsub_topic.googleplay[0].id : null
}

output "googleplay_push_audience" {
  description = "PROVIDER_CONFIG googleplay.audience."
  value       = var.googleplay ? local.googleplay_audience : null
}

output "googleplay_push_service_account" {
  description = "PROVIDER_CONFIG googleplay.service_account."
  value       = var.googleplay ? google_service_account.pubsub_push[0].email : null
}

# ---------------------------------------------------------------------------------------------
# Outputs: what an operator needs next, and no secret

output "admin_service" {
  description = "The Admin function's Cloud Run service: gcloud run services proxy <it> --region <region>."
  value       = google_cloudfunctions2_function.fn["admin"].service_config[0].service
}

output "query_service" {
  description = "The Query function's Cloud Run service, for game servers (games.<game>.query_callers)."
  value       = google_cloudfunctions2_function.fn["query"].service_config[0].uri
}

output "ingest_url" {
  description = "Register this URL as the notify URL at the payment provider."
  value       = google_cloudfunctions2_function.fn["ingest"].service_config[0].uri
}

output "deliver_url" {
  description = "Deliver's URL, put on every task (not public)."
  value       = local.deliver_url
}

output "queues" {
  description = "Each game's Cloud Tasks queue paths."
  value       = local.queue_paths
}

output "sandbox_queues" {
  description = "Each game's sandbox Cloud Tasks queue paths (games with a sandbox endpoint)."
  value       = local.sandbox_queue_paths
}

output "runtime_service_account" {
  description = "Identity of the functions."
  value       = google_service_account.runtime.email
}

output "invoker_service_account" {
  description = "Identity Cloud Tasks calls Deliver with."
  value       = google_service_account.invoker.email
}

output "secrets" {
  description = "Secret Manager secrets to add versions to (names only)."
  value       = { for k, s in google_secret_manager_secret.secret : k => s.secret_id }
}

# ---------------------------------------------------------------------------------------------
# Watching it: log-based metrics, alerts and a dashboard
#
# Log-based metrics, not OpenTelemetry: the functions scale to zero, and an instance stopping
# (or killed mid-request) would lose metrics buffered for export, while every log line is
# already in Cloud Logging the moment it is written. The metrics come from one table,
# infra/monitoring/metrics.json, which the functions' tests check against the log entries the
# real handlers write.

locals {
  metrics     = { for m in jsondecode(file("${path.module}/infra/monitoring/metrics.json")).metrics : m.name => m }
  metric_type = { for name, m in local.metrics : name => "logging.googleapis.com/user/${var.name}/${name}" }
  # The same metrics' names in PromQL: the first / as :, every other character outside
  # [a-zA-Z0-9_] as _ (Cloud Monitoring's mapping).
  metric_promql = { for name, m in local.metrics : name => "logging_googleapis_com:user_${replace(var.name, "-", "_")}_${name}" }
  alerting      = length(var.notification_channels) > 0
  # Sandbox notifications alert only when the operator opts in: a staging server failing is
  # nobody's page. Applies to the metrics that carry the environment label.
  production_only = var.alert_on_sandbox ? "" : " AND metric.label.environment=\"production\""
}

resource "google_logging_metric" "m" {
  for_each = local.metrics
  name     = "${var.name}/${each.key}"
  filter = join(" AND ", concat(
    ["resource.type=\"cloud_run_revision\"", "resource.labels.service_name=~\"^${var.name}-\""],
    [for k, v in each.value.match : "jsonPayload.${k}=\"${v}\""],
  ))
  description = each.value.description
  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = lookup(each.value, "kind", "") == "distribution" ? "DISTRIBUTION" : "INT64"
    unit         = lookup(each.value, "unit", "1")
    display_name = "payrelay ${replace(each.key, "_", " ")}"
    dynamic "labels" {
      for_each = each.value.labels
      content {
        key        = labels.value
        value_type = "STRING"
      }
    }
  }
  label_extractors = { for l in each.value.labels : l => "EXTRACT(jsonPayload.${l})" }
  value_extractor  = lookup(each.value, "kind", "") == "distribution" ? "EXTRACT(jsonPayload.${each.value.value})" : null
  dynamic "bucket_options" {
    for_each = lookup(each.value, "kind", "") == "distribution" ? [1] : []
    content {
      exponential_buckets {
        num_finite_buckets = 32
        growth_factor      = 1.6
        scale              = 1
      }
    }
  }
  depends_on = [google_project_service.api]
}

locals {
  # Each alert: the metric it watches and what an operator does (the runbook in infra/README.md).
  count_alerts = {
    dead_letter        = { metric = "notifications_failed", title = "payrelay: a notification was dead-lettered", doc = "A game server never acknowledged a notification (8 attempts, or 410). Open the dashboard's Failed list, fix the game server, replay it (Admin)." }
    ingest_5xx         = { metric = "ingest_5xx", title = "payrelay: Ingest answers 5xx", doc = "Ingest could not store notifications (Firestore or Cloud Tasks unavailable); providers retry. Check Firestore and Cloud Tasks status and the functions' logs (event=ingest_failed)." }
    amount_refused     = { metric = "amounts_refused", title = "payrelay: a payment's amount cannot be stated exactly", doc = "A verified notification's amount is not a whole number of its currency's ISO 4217 minor unit (event=ingest_refused, reason_class=inexact_amount: a Stripe ISK amount not divisible by 100, say). It was refused, never rounded, and the provider retries it. Compare the payment in the provider's console; a price the provider cannot settle exactly must be corrected there." }
    conflict           = { metric = "conflicts", title = "payrelay: a callback contradicts a stored payment (409)", doc = "Two callbacks for one order disagree (amount, currency) or a refund exceeds what was paid. Compare with the provider's records (Admin: find the payment) before anything else." }
    healed             = { metric = "healed", title = "payrelay: the sweeper healed lost tasks", doc = "A task was lost (queue purged, enqueue failed) or a delivery died; the sweeper enqueued it again. Check the queues and the logs (event=healed) for the cause." }
    reconcile_failed   = { metric = "reconcile_failed", title = "payrelay: a reconciliation could not run", doc = "An account's daily reconciliation failed (event=reconcile_failed, reason_class: not_ready, refused, unavailable, too_large); Cloud Scheduler retries for about 3 hours. refused: check the account's keys in PROVIDER_CONFIG; too_large: the stored day is larger than reconcile_memory is sized for (RECONCILE_MAX_DAY_PAYMENTS), raise it; when fixed, run it from the dashboard's Reconciliation page." }
    reconcile_findings = { metric = "reconcile_findings", title = "payrelay: reconciliation found payrelay out of step with a bill", doc = "The provider's bill and payrelay disagree (event=reconcile_finding, kind). missing_payment and missing_refund were recovered and relayed; conflict, unrelayable and not_in_bill need an operator: open the day's report in the dashboard (Reconciliation) and compare with the provider's console." }
    heal_stuck         = { metric = "heal_stuck", title = "payrelay: the sweeper keeps failing to enqueue a notification", doc = "The sweeper failed 3 times or more in a row to enqueue a notification again (event=heal_stuck names it and the error); it backs off and the other notifications are healed meanwhile. Check the game's queue (paused? rate limits? IAM?) and the error; the sweeper retries on its own once it can." }
    store_ack_due      = { metric = "store_acks_due", title = "payrelay: a purchase is still unacknowledged near the store's deadline", doc = "Google Play refunds a purchase not acknowledged within three days; this one (event=store_ack_due names it, its deadline and why) has less than a day left. If the game server has not acknowledged the payment, fix it and replay the payment's notification: payrelay acknowledges once the game does. If the store refuses the acknowledgement (why says so), check that the runtime account is invited in Play Console with Manage orders. Without payrelay's acknowledgement (acknowledge false), the game must acknowledge." }
    orphaned           = { metric = "orphaned", title = "payrelay: a notification was orphaned (its game or queue is gone)", doc = "A notification's game, its endpoint for the payment's environment, or its queue is no longer there (event=orphaned names it): nothing was posted. Restore the game in GAMES (or its queue), then replay the orphaned notifications from the dashboard (state orphaned) or with a bulk replay." }
    env_mismatch       = { metric = "environment_mismatch", title = "payrelay: a notification of an environment its app is not configured for", doc = "A provider sent a notification for an app configured for the other environment (e.g. an App Store Sandbox notification for a bundle whose PROVIDER_CONFIG environments are production only, or a live Stripe event for a test-only account). It was acknowledged and stored, not relayed (event=environment_mismatch names the app). Fix the app's environments in PROVIDER_CONFIG, then replay it from the dashboard (state not_relayed)." }
    recover_failed     = { metric = "recover_failed", title = "payrelay: a recovery sweep could not read a provider's undelivered events", doc = "The hourly sweep of a Stripe account's undelivered events failed (event=recover_failed names the account and the error): a 401 means the account's restricted key in PROVIDER_CONFIG api_keys was revoked or lacks read access to events, charges, refunds, Checkout Sessions or invoices. Until it runs, a webhook Stripe failed to deliver is not recovered; each run reads from where the last good one ended." }
    startup_failure    = { metric = "startup_failures", title = "payrelay: a function refused to start", doc = "A revision's configuration is invalid; the log line (event=startup_failed) names every problem. Fix GAMES, the secrets or PROVIDER_CONFIG and deploy again." }
  }
}

resource "google_monitoring_alert_policy" "count" {
  for_each     = local.alerting ? local.count_alerts : {}
  display_name = each.value.title
  combiner     = "OR"
  conditions {
    display_name = "${each.value.metric} > 0"
    condition_threshold {
      filter          = "metric.type=\"${local.metric_type[each.value.metric]}\" AND resource.type=\"cloud_run_revision\"${contains(local.metrics[each.value.metric].labels, "environment") && each.value.metric != "environment_mismatch" ? local.production_only : ""}"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }
  notification_channels = var.notification_channels
  documentation {
    content   = each.value.doc
    mime_type = "text/markdown"
  }
  depends_on = [google_logging_metric.m]
}

# A game server failing more than a share of its attempts over 10 minutes, game by game.
locals {
  # The same opt-in in PromQL: only production's attempts unless sandbox alerts too.
  attempts_env = var.alert_on_sandbox ? "" : ",environment=\"production\""
}

resource "google_monitoring_alert_policy" "game_failing" {
  count        = local.alerting ? 1 : 0
  display_name = "payrelay: a game server is failing its notifications"
  combiner     = "OR"
  conditions {
    display_name = "failed share of attempts > ${var.game_failure_threshold} over 10 min"
    condition_prometheus_query_language {
      query    = "sum by (game, environment) (rate(${local.metric_promql["attempts"]}{outcome!=\"delivered\"${local.attempts_env}}[10m])) / sum by (game, environment) (rate(${local.metric_promql["attempts"]}{${trimprefix(local.attempts_env, ",")}}[10m])) > ${var.game_failure_threshold}"
      duration = "0s"
    }
  }
  notification_channels = var.notification_channels
  documentation {
    content   = "A game's server answers most attempts with an error or not at all. Its notifications climb the ladder; others are unaffected (its own queue). Contact the game's team; when it is back, replay what failed (Admin: bulk replay by game)."
    mime_type = "text/markdown"
  }
  depends_on = [google_logging_metric.m]
}

locals {
  # One row per concern: deliveries, game servers, Ingest, the sweeper and health.
  dashboard_charts = [
    { title = "Delivered, by game and environment", metric = "notifications_delivered", group = ["metric.label.game", "metric.label.environment"] },
    { title = "Retried, by game and environment", metric = "notifications_retried", group = ["metric.label.game", "metric.label.environment"] },
    { title = "Dead-lettered, by game and environment", metric = "notifications_failed", group = ["metric.label.game", "metric.label.environment"] },
    { title = "Refunds held, by game and environment", metric = "notifications_held", group = ["metric.label.game", "metric.label.environment"] },
    { title = "Attempt latency (p99), by game and environment", metric = "attempt_latency", group = ["metric.label.game", "metric.label.environment"], p99 = true },
    { title = "Attempts, by outcome", metric = "attempts", group = ["metric.label.outcome"] },
    { title = "Ingest accepted, by provider", metric = "notifications_received", group = ["metric.label.provider"] },
    { title = "Ingest refused, by reason", metric = "ingest_refused", group = ["metric.label.reason_class"] },
    { title = "Ingest 5xx, by provider", metric = "ingest_5xx", group = ["metric.label.provider"] },
    { title = "Conflicts (409)", metric = "conflicts", group = ["metric.label.provider"] },
    { title = "Healed by the sweeper, by game and environment", metric = "healed", group = ["metric.label.game", "metric.label.environment"] },
    { title = "Oldest overdue (s, max)", metric = "oldest_overdue", group = [], p99 = true },
    { title = "Reconciliation findings, by kind", metric = "reconcile_findings", group = ["metric.label.kind"] },
    { title = "Reconciliations failed", metric = "reconcile_failed", group = ["metric.label.provider"] },
    { title = "Environment mismatches, by provider", metric = "environment_mismatch", group = ["metric.label.provider"] },
  ]
}

resource "google_monitoring_dashboard" "payrelay" {
  dashboard_json = jsonencode({
    displayName = "payrelay"
    gridLayout = {
      columns = 4
      widgets = [for c in local.dashboard_charts : {
        title = c.title
        xyChart = {
          dataSets = [{
            plotType = "LINE"
            timeSeriesQuery = {
              timeSeriesFilter = {
                filter = "metric.type=\"${local.metric_type[c.metric]}\" resource.type=\"cloud_run_revision\""
                aggregation = {
                  alignmentPeriod    = "60s"
                  perSeriesAligner   = lookup(c, "p99", false) ? "ALIGN_PERCENTILE_99" : "ALIGN_SUM"
                  crossSeriesReducer = lookup(c, "p99", false) ? "REDUCE_MAX" : "REDUCE_SUM"
                  groupByFields      = c.group
                }
              }
            }
          }]
        }
      }]
    }
  })
  depends_on = [google_logging_metric.m]
}
