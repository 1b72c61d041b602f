# Offline tests of terraform.tf against the real google provider's schema, with its API mocked.
# Run from the repository root: terraform test -test-directory=infra/terraform/tests

mock_provider "google" {
  mock_data "google_project" {
    defaults = {
      number = "123456789012"
    }
  }
  mock_resource "google_service_account" {
    defaults = {
      email = "mock-sa@studio-prod.iam.gserviceaccount.com"
      name  = "projects/studio-prod/serviceAccounts/mock-sa@studio-prod.iam.gserviceaccount.com"
    }
  }
  mock_resource "google_cloudfunctions2_function" {
    defaults = {
      service_config = { service = "projects/studio-prod/locations/asia-east1/services/mock", uri = "https://mock-ingest.a.run.app" }
    }
  }
}

variables {
  project_id = "studio-prod"
  region     = "asia-east1"
  games = {
    # A game with a sandbox endpoint: its staging server, queue and secrets of its own.
    sword = { url = "https://sword.example.com/payrelay", query_callers = ["serviceAccount:sword-server@studio-prod.iam.gserviceaccount.com"],
    sandbox = { url = "https://staging.sword.example.com/payrelay", timeout = "5s" } }
    # A game on a private network, spread over two queues with its own limits.
    farm-valley = { url = "https://farm.internal.example.com/payrelay", allow_private = true, timeout = "5s",
    shards = 2, max_dispatches_per_second = 20, max_concurrent_dispatches = 10 }
  }
  operators = ["user:ops@studio.example", "group:payments-oncall@studio.example"]
  # Any existing file: it is only hashed, and the mock provider uploads nothing.
  source_zip = "go.mod"
}

run "wiring" {
  command = apply

  assert {
    condition     = google_cloudfunctions2_function.fn["ingest"].build_config[0].entry_point == "Ingest" && google_cloudfunctions2_function.fn["deliver"].build_config[0].entry_point == "Deliver" && google_cloudfunctions2_function.fn["admin"].build_config[0].entry_point == "Admin" && google_cloudfunctions2_function.fn["sweep"].build_config[0].entry_point == "Sweep" && google_cloudfunctions2_function.fn["reconcile"].build_config[0].entry_point == "Reconcile" && google_cloudfunctions2_function.fn["query"].build_config[0].entry_point == "Query" && google_cloudfunctions2_function.fn["recover"].build_config[0].entry_point == "Recover"
    error_message = "entry points must be the names registered with functions.HTTP: Ingest, Deliver, Admin, Sweep, Reconcile and Query"
  }
  assert {
    condition     = alltrue([for f in google_cloudfunctions2_function.fn : f.build_config[0].runtime == "go126"])
    error_message = "functions must run on go126"
  }
  assert {
    condition = alltrue([for f in google_cloudfunctions2_function.fn : sort(keys(f.service_config[0].environment_variables)) == sort([
      "DELIVER_LEASE", "DELIVER_URL", "FIRESTORE_DATABASE", "GAMES", "GOMEMLIMIT", "LADDER", "LADDER_COMPRESSION",
      "LOG_LEVEL", "OPS_QUEUE", "PAYMENTS_COLLECTION", "PROJECT_ID", "QUERY_CALLERS", "RECONCILE_MAX_DAY_PAYMENTS", "REPLAY_RATE", "SWEEP_MARGIN", "TASKS_INVOKER_SA", "TASKS_OIDC_AUDIENCE",
    ])])
    error_message = "each function must get every plain variable infra/config reads"
  }
  assert {
    condition     = google_cloudfunctions2_function.fn["reconcile"].service_config[0].environment_variables["RECONCILE_MAX_DAY_PAYMENTS"] == "12582912" && google_cloudfunctions2_function.fn["reconcile"].service_config[0].available_memory == "1Gi"
    error_message = "the largest day a reconciliation loads follows from its memory: 1Gi x 0.75 / 64 bytes per stored payment = 12,582,912"
  }
  assert {
    condition     = google_cloudfunctions2_function.fn["reconcile"].service_config[0].environment_variables["GOMEMLIMIT"] == "921MiB" && google_cloudfunctions2_function.fn["ingest"].service_config[0].environment_variables["GOMEMLIMIT"] == "230MiB"
    error_message = "each function's Go memory limit is nine tenths of its memory (1Gi: 921MiB, 256Mi: 230MiB)"
  }
  assert {
    condition = alltrue([for f in google_cloudfunctions2_function.fn :
    sort([for s in f.service_config[0].secret_environment_variables : s.key]) == sort(["GAME_SANDBOX_SECRETS_SWORD", "GAME_SECRETS_FARM_VALLEY", "GAME_SECRETS_SWORD", "INGEST_SECRETS", "PROVIDER_CONFIG"])])
    error_message = "secrets, each game's signing secrets among them, must reach the functions as secret environment variables"
  }
  assert {
    condition = alltrue([for f in google_cloudfunctions2_function.fn : alltrue([for s in f.service_config[0].secret_environment_variables :
    s.secret == google_secret_manager_secret.secret["game-farm-valley"].secret_id if s.key == "GAME_SECRETS_FARM_VALLEY"])])
    error_message = "GAME_SECRETS_FARM_VALLEY must come from farm-valley's own secret"
  }
  assert {
    condition     = google_secret_manager_secret.secret["game-sword"].secret_id == "payrelay-game-sword-secrets" && google_secret_manager_secret.secret["game-farm-valley"].secret_id == "payrelay-game-farm-valley-secrets"
    error_message = "each game must get its own signing-secret container"
  }
  assert {
    condition = google_secret_manager_secret.secret["sandbox-sword"].secret_id == "payrelay-sandbox-sword-secrets" && !contains(keys(google_secret_manager_secret.secret), "sandbox-farm-valley") && alltrue([for f in google_cloudfunctions2_function.fn : alltrue([for s in f.service_config[0].secret_environment_variables :
    s.secret == google_secret_manager_secret.secret["sandbox-sword"].secret_id if s.key == "GAME_SANDBOX_SECRETS_SWORD"])])
    error_message = "a game's sandbox must sign with secrets of its own container (a staging server holds no production secret), and only a game with a sandbox gets one"
  }
  assert {
    condition     = sort([for q in google_cloud_tasks_queue.game : q.name]) == sort(["payrelay-farm-valley-0", "payrelay-farm-valley-1", "payrelay-sword-0", "payrelay-sword-s0"])
    error_message = "every game must get its queue, one per shard, and a game with a sandbox its sandbox queue"
  }
  assert {
    condition     = google_cloud_tasks_queue.game["sword-s0"].rate_limits[0].max_dispatches_per_second == 500 && google_cloud_tasks_queue.game["sword-s0"].retry_config[0].max_attempts == -1 && google_cloud_tasks_queue_iam_member.runtime_enqueue["sword-s0"].name == "payrelay-sword-s0"
    error_message = "a sandbox queue gets its own rate limits and retry policy, and the runtime may enqueue on it"
  }
  assert {
    condition     = google_cloud_tasks_queue.game["farm-valley-1"].rate_limits[0].max_dispatches_per_second == 20 && google_cloud_tasks_queue.game["farm-valley-1"].rate_limits[0].max_concurrent_dispatches == 10 && google_cloud_tasks_queue.game["sword-0"].rate_limits[0].max_dispatches_per_second == 500 && google_cloud_tasks_queue.game["sword-0"].rate_limits[0].max_concurrent_dispatches == 100
    error_message = "each game's queues must carry its own rate limits (defaults: Cloud Tasks' 500/s a queue, the game server guarded by 100 concurrent)"
  }
  assert {
    condition = jsondecode(google_cloudfunctions2_function.fn["deliver"].service_config[0].environment_variables["GAMES"]) == [
      { name = "farm-valley", url = "https://farm.internal.example.com/payrelay", timeout = "5s", allow_private = true,
      queues = ["projects/studio-prod/locations/asia-east1/queues/payrelay-farm-valley-0", "projects/studio-prod/locations/asia-east1/queues/payrelay-farm-valley-1"] },
      { name   = "sword", url = "https://sword.example.com/payrelay", timeout = "10s", allow_private = false,
        queues = ["projects/studio-prod/locations/asia-east1/queues/payrelay-sword-0"],
        sandbox = { url = "https://staging.sword.example.com/payrelay", timeout = "5s", allow_private = false,
      queues = ["projects/studio-prod/locations/asia-east1/queues/payrelay-sword-s0"] } },
    ]
    error_message = "GAMES must name every game's URL, settings and queues, as the functions read them"
  }
  assert {
    condition     = google_cloudfunctions2_function.fn["ingest"].service_config[0].environment_variables["GAMES"] == google_cloudfunctions2_function.fn["deliver"].service_config[0].environment_variables["GAMES"]
    error_message = "Ingest and Deliver must see the same games"
  }
  assert {
    condition     = google_cloudfunctions2_function.fn["deliver"].service_config[0].environment_variables["DELIVER_URL"] == "https://payrelay-deliver-123456789012.asia-east1.run.app"
    error_message = "DELIVER_URL must be Deliver's deterministic Cloud Run URL"
  }
  assert {
    condition     = google_cloudfunctions2_function.fn["deliver"].service_config[0].environment_variables["TASKS_OIDC_AUDIENCE"] == google_cloudfunctions2_function.fn["deliver"].service_config[0].environment_variables["DELIVER_URL"]
    error_message = "the OIDC audience must be Deliver's URL"
  }
  assert {
    condition     = google_cloudfunctions2_function.fn["ingest"].service_config[0].environment_variables["TASKS_INVOKER_SA"] == google_service_account.invoker.email
    error_message = "tasks must be signed as the invoker account"
  }
  assert {
    condition     = alltrue([for f in google_cloudfunctions2_function.fn : f.service_config[0].service_account_email == google_service_account.runtime.email])
    error_message = "functions must run as the runtime account"
  }
  assert {
    condition     = google_cloud_run_service_iam_member.ingest_public.member == "allUsers" && google_cloud_run_service_iam_member.ingest_public.role == "roles/run.invoker"
    error_message = "Ingest must be public"
  }
  assert {
    condition     = google_cloud_run_service_iam_member.deliver_invoker.member == "serviceAccount:${google_service_account.invoker.email}" && google_cloud_run_service_iam_member.deliver_invoker.role == "roles/run.invoker"
    error_message = "only the invoker account may invoke Deliver"
  }
  assert {
    condition     = google_cloud_run_service_iam_member.deliver_invoker.service == google_cloudfunctions2_function.fn["deliver"].service_config[0].service
    error_message = "the invoker binding must be on Deliver's service"
  }
  assert {
    condition     = google_service_account_iam_member.runtime_acts_as_invoker.service_account_id == google_service_account.invoker.name && google_service_account_iam_member.runtime_acts_as_invoker.role == "roles/iam.serviceAccountUser" && google_service_account_iam_member.runtime_acts_as_invoker.member == "serviceAccount:${google_service_account.runtime.email}"
    error_message = "the runtime account must be able to act as the invoker account (CreateTask with an OIDC token)"
  }
  assert {
    condition     = sort(keys(google_cloud_tasks_queue_iam_member.runtime_enqueue)) == sort(keys(google_cloud_tasks_queue.game)) && alltrue([for k, m in google_cloud_tasks_queue_iam_member.runtime_enqueue : m.role == "roles/cloudtasks.enqueuer" && m.name == google_cloud_tasks_queue.game[k].name && m.member == "serviceAccount:${google_service_account.runtime.email}"])
    error_message = "the runtime account may enqueue on each game's queues, granted queue by queue"
  }
  assert {
    condition     = google_project_iam_custom_role.queue_getter.permissions == toset(["cloudtasks.queues.get"]) && sort(keys(google_cloud_tasks_queue_iam_member.runtime_get)) == sort(concat(keys(google_cloud_tasks_queue.game), ["ops"])) && alltrue([for m in google_cloud_tasks_queue_iam_member.runtime_get : m.role == google_project_iam_custom_role.queue_getter.name && m.member == "serviceAccount:${google_service_account.runtime.email}"])
    error_message = "the runtime account may look up each of its queues (the start's check), with a role of cloudtasks.queues.get alone, granted queue by queue"
  }
  assert {
    condition     = alltrue([for q in google_cloud_tasks_queue.game : q.retry_config[0].max_attempts == -1 && q.retry_config[0].max_retry_duration == "0s"])
    error_message = "a queue must never drop a task: unlimited attempts, no retry deadline"
  }
  assert {
    condition     = alltrue([for q in google_cloud_tasks_queue.game : q.retry_config[0].max_backoff == "60s"])
    error_message = "the queues' backoff must be bounded"
  }
  assert {
    condition     = !contains(["roles/owner", "roles/editor", "roles/viewer"], google_project_iam_member.runtime_firestore.role)
    error_message = "no primitive roles"
  }
  assert {
    condition     = alltrue([for s in google_secret_manager_secret_iam_member.runtime_reads : s.role == "roles/secretmanager.secretAccessor"])
    error_message = "the runtime may only read the secrets"
  }
  assert {
    condition     = alltrue([for a in google_project_service.api : a.disable_on_destroy == false]) && length(google_project_service.api) == 12
    error_message = "the 12 APIs must be enabled and left enabled on destroy"
  }
  assert {
    condition     = sort(keys(google_logging_metric.m)) == sort([for m in jsondecode(file("infra/monitoring/metrics.json")).metrics : m.name])
    error_message = "every metric of infra/monitoring/metrics.json must exist, and no other"
  }
  assert {
    condition     = strcontains(google_logging_metric.m["notifications_failed"].filter, "jsonPayload.event=\"attempt\"") && strcontains(google_logging_metric.m["notifications_failed"].filter, "jsonPayload.outcome=\"failed\"") && google_logging_metric.m["notifications_failed"].label_extractors["game"] == "EXTRACT(jsonPayload.game)"
    error_message = "a metric's filter and label extractors must come from its row in the table"
  }
  assert {
    condition     = google_logging_metric.m["attempt_latency"].metric_descriptor[0].value_type == "DISTRIBUTION" && google_logging_metric.m["attempt_latency"].value_extractor == "EXTRACT(jsonPayload.latency_ms)"
    error_message = "attempt latency must be a distribution of latency_ms"
  }
  assert {
    condition     = length(google_monitoring_alert_policy.count) == 0 && length(google_monitoring_alert_policy.game_failing) == 0
    error_message = "no alert policy without a notification channel"
  }
  assert {
    condition = alltrue([for w in jsondecode(google_monitoring_dashboard.payrelay.dashboard_json).gridLayout.widgets :
      anytrue([for m in google_logging_metric.m : strcontains(w.xyChart.dataSets[0].timeSeriesQuery.timeSeriesFilter.filter, "metric.type=\"logging.googleapis.com/user/${m.name}\"")])
    ])
    error_message = "every dashboard chart must name a metric that exists"
  }
  assert {
    condition     = google_cloudfunctions2_function.fn["deliver"].service_config[0].environment_variables["OPS_QUEUE"] == "projects/studio-prod/locations/asia-east1/queues/payrelay-ops" && google_cloud_tasks_queue_iam_member.runtime_enqueue_ops.name == google_cloud_tasks_queue.ops.name && !contains([for q in google_cloud_tasks_queue.game : q.name], google_cloud_tasks_queue.ops.name)
    error_message = "bulk replays' steps must go through their own queue, never a game's, which the runtime may enqueue on"
  }
  assert {
    condition     = sort([for m in google_cloud_run_service_iam_member.admin_operators : m.member]) == sort(["group:payments-oncall@studio.example", "user:ops@studio.example"]) && alltrue([for m in google_cloud_run_service_iam_member.admin_operators : m.role == "roles/run.invoker" && m.service == google_cloudfunctions2_function.fn["admin"].service_config[0].service])
    error_message = "only the operators may invoke Admin"
  }
  assert {
    condition     = google_cloud_run_service_iam_member.ingest_public.service == google_cloudfunctions2_function.fn["ingest"].service_config[0].service && !contains([for m in google_cloud_run_service_iam_member.admin_operators : m.member], "allUsers")
    error_message = "Admin must not be public; only Ingest is"
  }
  assert {
    condition     = google_cloud_scheduler_job.sweep.schedule == "* * * * *" && google_cloud_scheduler_job.sweep.http_target[0].uri == google_cloudfunctions2_function.fn["sweep"].service_config[0].uri && google_cloud_scheduler_job.sweep.http_target[0].oidc_token[0].service_account_email == google_service_account.scheduler.email
    error_message = "the sweeper must run every minute, calling Sweep as the scheduler's identity"
  }
  assert {
    condition     = google_cloud_scheduler_job.reconcile.schedule == "0 10 * * *" && google_cloud_scheduler_job.reconcile.time_zone == "Asia/Shanghai" && google_cloud_scheduler_job.reconcile.http_target[0].uri == google_cloudfunctions2_function.fn["reconcile"].service_config[0].uri && google_cloud_scheduler_job.reconcile.http_target[0].oidc_token[0].service_account_email == google_service_account.scheduler.email && google_cloud_scheduler_job.reconcile.retry_config[0].retry_count > 0
    error_message = "the reconciliation must run daily at 10:00 Asia/Shanghai as the scheduler's identity, retried when it fails"
  }
  assert {
    condition     = google_cloud_run_service_iam_member.reconcile_scheduler.member == "serviceAccount:${google_service_account.scheduler.email}" && google_cloud_run_service_iam_member.reconcile_scheduler.service == google_cloudfunctions2_function.fn["reconcile"].service_config[0].service && google_cloudfunctions2_function.fn["reconcile"].service_config[0].timeout_seconds == 540 && google_cloudfunctions2_function.fn["reconcile"].service_config[0].available_memory == "1Gi" && google_cloudfunctions2_function.fn["admin"].service_config[0].available_memory == "1Gi" && google_cloudfunctions2_function.fn["ingest"].service_config[0].available_memory == "256Mi"
    error_message = "Reconcile must be invocable by the scheduler's identity only, with the longest timeout and the memory of a whole bill (Admin too)"
  }
  assert {
    condition     = [for m in google_cloud_run_service_iam_member.query_callers : m.member] == ["serviceAccount:sword-server@studio-prod.iam.gserviceaccount.com"] && alltrue([for m in google_cloud_run_service_iam_member.query_callers : m.role == "roles/run.invoker" && m.service == google_cloudfunctions2_function.fn["query"].service_config[0].service])
    error_message = "only the games' query_callers may invoke the Query function"
  }
  assert {
    condition     = jsondecode(google_cloudfunctions2_function.fn["query"].service_config[0].environment_variables["QUERY_CALLERS"]) == { "sword-server@studio-prod.iam.gserviceaccount.com" = "sword" }
    error_message = "QUERY_CALLERS must map each game server identity's email to its one game"
  }
  assert {
    condition     = google_cloud_scheduler_job.recover.schedule == "23 * * * *" && google_cloud_scheduler_job.recover.http_target[0].uri == google_cloudfunctions2_function.fn["recover"].service_config[0].uri && google_cloud_scheduler_job.recover.http_target[0].oidc_token[0].service_account_email == google_service_account.scheduler.email && google_cloud_scheduler_job.recover.http_target[0].oidc_token[0].audience == google_cloudfunctions2_function.fn["recover"].service_config[0].uri && google_cloud_scheduler_job.recover.retry_config[0].retry_count > 0
    error_message = "the recovery sweeps must run hourly, calling Recover as the scheduler's identity, retried when a run fails"
  }
  assert {
    condition     = google_cloud_run_service_iam_member.recover_scheduler.member == "serviceAccount:${google_service_account.scheduler.email}" && google_cloud_run_service_iam_member.recover_scheduler.service == google_cloudfunctions2_function.fn["recover"].service_config[0].service && google_cloudfunctions2_function.fn["recover"].service_config[0].max_instance_count == 1 && google_cloudfunctions2_function.fn["recover"].service_config[0].timeout_seconds == 540
    error_message = "only the scheduler's identity may invoke Recover, one instance at a time, with the longest timeout"
  }
  assert {
    condition     = google_cloud_run_service_iam_member.sweep_scheduler.member == "serviceAccount:${google_service_account.scheduler.email}" && google_cloud_run_service_iam_member.sweep_scheduler.service == google_cloudfunctions2_function.fn["sweep"].service_config[0].service
    error_message = "only the scheduler's identity may invoke Sweep"
  }
  assert {
    condition     = length(google_firestore_index.payments) == 9 && alltrue([for k, i in google_firestore_index.payments : i.collection == "payments" && i.fields[0].field_path == "tags" && i.fields[0].array_config == "CONTAINS" && i.fields[length(i.fields) - 1].field_path == "received_at" && i.fields[length(i.fields) - 1].order == "DESCENDING" if k != "game,due_at"]) && google_firestore_index.payments["game,due_at"].fields[1].order == "ASCENDING"
    error_message = "the operators' list queries need their 8 composite indexes on payments, and the sweeper its per-game one"
  }
  assert {
    condition     = google_firestore_database.payments.type == "FIRESTORE_NATIVE"
    error_message = "Firestore must be in native mode"
  }
  assert {
    condition     = output.ingest_url == "https://mock-ingest.a.run.app" && output.queues["sword"] == ["projects/studio-prod/locations/asia-east1/queues/payrelay-sword-0"] && output.sandbox_queues == { sword = ["projects/studio-prod/locations/asia-east1/queues/payrelay-sword-s0"] }
    error_message = "outputs must give the Ingest URL and each game's queues, and its sandbox's"
  }
}

run "refuses_plain_http_game_server" {
  command = plan
  variables {
    games = { sword = { url = "http://game.example.com/payments" } }
  }
  expect_failures = [var.games]
}

run "refuses_bad_game_name" {
  command = plan
  variables {
    games = { Sword_Game = { url = "https://game.example.com/payments" } }
  }
  expect_failures = [var.games]
}

run "refuses_bad_shards_and_timeout" {
  command = plan
  variables {
    games = { sword = { url = "https://game.example.com/payments", shards = 0, timeout = "30s" } }
  }
  expect_failures = [var.games]
}

run "refuses_no_game" {
  command = plan
  variables {
    games = {}
  }
  expect_failures = [var.games]
}

run "refuses_bad_ladder" {
  command = plan
  variables {
    ladder = "0s,soon"
  }
  expect_failures = [var.ladder]
}

run "refuses_bad_operator" {
  command = plan
  variables {
    operators = ["ops@studio.example"]
  }
  expect_failures = [var.operators]
}

run "refuses_bad_project" {
  command = plan
  variables {
    project_id = "Studio_Prod"
  }
  expect_failures = [var.project_id]
}

run "alerts_with_a_channel" {
  command = apply
  variables {
    notification_channels = ["projects/studio-prod/notificationChannels/123"]
  }
  assert {
    condition     = sort(keys(google_monitoring_alert_policy.count)) == sort(["amount_refused", "conflict", "dead_letter", "env_mismatch", "heal_stuck", "healed", "ingest_5xx", "orphaned", "reconcile_failed", "reconcile_findings", "recover_failed", "startup_failure", "store_ack_due"]) && length(google_monitoring_alert_policy.game_failing) == 1
    error_message = "each concern must get its alert once a channel is given"
  }
  assert {
    condition = alltrue([for a in google_monitoring_alert_policy.count :
      anytrue([for m in google_logging_metric.m : startswith(a.conditions[0].condition_threshold[0].filter, "metric.type=\"logging.googleapis.com/user/${m.name}\" AND resource.type=\"cloud_run_revision\"")])
    ])
    error_message = "every alert must watch a metric that exists"
  }
  assert {
    condition     = endswith(google_monitoring_alert_policy.count["dead_letter"].conditions[0].condition_threshold[0].filter, " AND metric.label.environment=\"production\"") && endswith(google_monitoring_alert_policy.count["healed"].conditions[0].condition_threshold[0].filter, " AND metric.label.environment=\"production\"") && !strcontains(google_monitoring_alert_policy.count["env_mismatch"].conditions[0].condition_threshold[0].filter, "metric.label.environment") && !strcontains(google_monitoring_alert_policy.count["ingest_5xx"].conditions[0].condition_threshold[0].filter, "metric.label.environment") && strcontains(google_monitoring_alert_policy.game_failing[0].conditions[0].condition_prometheus_query_language[0].query, "environment=\"production\"")
    error_message = "by default a sandbox failure pages nobody: dead letters, healed tasks and failing game servers alert for production only; an environment mismatch (a configuration mistake) always alerts"
  }
  assert {
    condition     = strcontains(google_monitoring_alert_policy.game_failing[0].conditions[0].condition_prometheus_query_language[0].query, "logging_googleapis_com:user_payrelay_attempts") && alltrue([for a in google_monitoring_alert_policy.count : length(a.notification_channels) == 1 && contains(a.notification_channels, "projects/studio-prod/notificationChannels/123")])
    error_message = "the game-failing alert must watch the attempts metric, and every alert notify the channel"
  }
}

run "refuses_a_query_caller_that_is_not_a_service_account" {
  command = plan
  variables {
    games = { sword = { url = "https://sword.example.com/payrelay", query_callers = ["group:everyone@studio.example"] } }
  }
  expect_failures = [var.games]
}

run "alerts_on_sandbox_when_opted_in" {
  command = apply
  variables {
    notification_channels = ["projects/studio-prod/notificationChannels/123"]
    alert_on_sandbox      = true
  }
  assert {
    condition     = alltrue([for a in google_monitoring_alert_policy.count : !strcontains(a.conditions[0].condition_threshold[0].filter, "metric.label.environment")]) && !strcontains(google_monitoring_alert_policy.game_failing[0].conditions[0].condition_prometheus_query_language[0].query, "environment=")
    error_message = "with alert_on_sandbox, sandbox notifications alert like production's"
  }
}

run "generic_sandbox_secret" {
  command = apply
  variables {
    generic_sandbox_secret = true
  }
  assert {
    condition = google_secret_manager_secret.secret["ingest-sandbox"].secret_id == "payrelay-ingest-sandbox-secrets" && alltrue([for f in google_cloudfunctions2_function.fn : anytrue([for s in f.service_config[0].secret_environment_variables :
    s.key == "INGEST_SANDBOX_SECRETS" && s.secret == google_secret_manager_secret.secret["ingest-sandbox"].secret_id])])
    error_message = "generic_sandbox_secret must create the sandbox-bound ingest secret and give it to the functions as INGEST_SANDBOX_SECRETS"
  }
}

run "apple_api_key" {
  command = apply
  variables {
    apple_api_key = true
  }
  assert {
    condition = google_secret_manager_secret.secret["apple-api-key"].secret_id == "payrelay-apple-api-key" && alltrue([for f in google_cloudfunctions2_function.fn : anytrue([for s in f.service_config[0].secret_environment_variables :
    s.key == "APPLE_API_KEY" && s.secret == google_secret_manager_secret.secret["apple-api-key"].secret_id && s.version == "latest"])])
    error_message = "apple_api_key must create the App Store key's own secret and give it to the functions as APPLE_API_KEY"
  }
  assert {
    condition     = google_secret_manager_secret_iam_member.runtime_reads["apple-api-key"].role == "roles/secretmanager.secretAccessor" && google_secret_manager_secret_iam_member.runtime_reads["apple-api-key"].member == "serviceAccount:${google_service_account.runtime.email}"
    error_message = "only the runtime may read the App Store key"
  }
}

run "no_apple_api_key_by_default" {
  command = plan
  assert {
    condition     = !contains(keys(google_secret_manager_secret.secret), "apple-api-key") && alltrue([for f in google_cloudfunctions2_function.fn : alltrue([for s in f.service_config[0].secret_environment_variables : s.key != "APPLE_API_KEY"])])
    error_message = "without apple_api_key there is no App Store key secret"
  }
}

run "googleplay" {
  command = apply
  variables {
    googleplay = true
  }
  assert {
    condition     = google_pubsub_topic_iam_member.googleplay_publisher[0].member == "serviceAccount:google-play-developer-notifications@system.gserviceaccount.com" && google_pubsub_topic_iam_member.googleplay_publisher[0].role == "roles/pubsub.publisher" && google_pubsub_topic_iam_member.googleplay_publisher[0].topic == google_pubsub_topic.googleplay[0].id
    error_message = "only Google Play's publisher account may publish to the RTDN topic"
  }
  assert {
    condition     = google_pubsub_subscription.googleplay[0].push_config[0].push_endpoint == "${google_cloudfunctions2_function.fn["ingest"].service_config[0].uri}/?provider=googleplay" && google_pubsub_subscription.googleplay[0].push_config[0].oidc_token[0].service_account_email == google_service_account.pubsub_push[0].email && google_pubsub_subscription.googleplay[0].push_config[0].oidc_token[0].audience == google_pubsub_subscription.googleplay[0].push_config[0].push_endpoint
    error_message = "the push must reach Ingest?provider=googleplay with an OIDC token of the dedicated push account, its audience the push URL"
  }
  assert {
    condition     = google_pubsub_subscription.googleplay[0].retry_policy[0].minimum_backoff == "10s" && google_pubsub_subscription.googleplay[0].dead_letter_policy[0].dead_letter_topic == google_pubsub_topic.googleplay_dead_letter[0].id && google_pubsub_subscription.googleplay[0].dead_letter_policy[0].max_delivery_attempts == 20
    error_message = "the push must retry with backoff and dead-letter after 20 attempts"
  }
  assert {
    condition     = google_pubsub_topic_iam_member.dead_letter_publisher[0].role == "roles/pubsub.publisher" && google_pubsub_subscription_iam_member.dead_letter_subscriber[0].role == "roles/pubsub.subscriber" && google_service_account_iam_member.pubsub_push_token[0].role == "roles/iam.serviceAccountTokenCreator"
    error_message = "Pub/Sub's service agent must mint the push tokens and be able to dead-letter"
  }
  assert {
    condition     = contains(keys(google_project_service.api), "pubsub.googleapis.com") && contains(keys(google_project_service.api), "androidpublisher.googleapis.com")
    error_message = "googleplay needs the Pub/Sub and Play Developer APIs"
  }
  assert {
    condition     = google_cloudfunctions2_function.fn["deliver"].service_config[0].environment_variables["OPS_QUEUE"] == "projects/${var.project_id}/locations/${var.region}/queues/${google_cloud_tasks_queue.ops.name}" && google_cloud_tasks_queue.ops.retry_config[0].max_attempts == -1 && google_cloud_tasks_queue.ops.retry_config[0].max_retry_duration == "0s" && google_cloud_tasks_queue_iam_member.runtime_enqueue_ops.member == "serviceAccount:${google_service_account.runtime.email}"
    error_message = "acknowledgements to Google go through the ops queue, which Deliver's runtime can enqueue on and which retries until Google accepts (no attempt or duration limit)"
  }
}

run "no_googleplay_by_default" {
  command = plan
  assert {
    condition     = length(google_pubsub_topic.googleplay) == 0 && length(google_pubsub_subscription.googleplay) == 0 && length(google_service_account.pubsub_push) == 0
    error_message = "without googleplay there is no Pub/Sub"
  }
}

run "refuses_a_sandbox_at_the_production_url" {
  command = plan
  variables {
    games = { sword = { url = "https://sword.example.com/payrelay", sandbox = { url = "https://SWORD.example.com/payrelay/" } } }
  }
  expect_failures = [var.games]
}

run "refuses_a_plain_http_sandbox" {
  command = plan
  variables {
    games = { sword = { url = "https://sword.example.com/payrelay", sandbox = { url = "http://staging.sword.example.com/payrelay" } } }
  }
  expect_failures = [var.games]
}

run "a_games_peak_sizes_its_shards" {
  command = apply
  variables {
    games = {
      sword = { url = "https://sword.example.com/payrelay", peak_per_second = 1200 }
      farm  = { url = "https://farm.example.com/payrelay", peak_per_second = 1200, shards = 1 }
    }
  }
  assert {
    condition     = sort([for q in google_cloud_tasks_queue.game : q.name]) == sort(["payrelay-farm-0", "payrelay-sword-0", "payrelay-sword-1", "payrelay-sword-2"]) && alltrue([for q in google_cloud_tasks_queue.game : q.rate_limits[0].max_dispatches_per_second == 500])
    error_message = "a peak of 1200 payments/s needs ceil(1200/500) = 3 queues at 500/s each, unless shards says otherwise"
  }
}

run "refuses_a_peak_beyond_16_queues" {
  command = plan
  variables {
    games = { sword = { url = "https://sword.example.com/payrelay", peak_per_second = 9000 } }
  }
  expect_failures = [var.games]
}
